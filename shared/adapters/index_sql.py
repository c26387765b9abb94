"""MetadataIndex on SQL through SQLAlchemy Core: SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, exists, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared.adapters import index_sql_changes as changefeed
from shared.adapters import index_sql_stability as stability
from shared.adapters.index_sql_schema import CREATED, PENDING, instances, make_engine, series, studies
from shared.adapters.index_sql_schema import name_words as words
from shared.adapters.index_sql_search import search
from shared.core.attributes import date_key, name_groups, name_words, time_key
from shared.core.changefeed import ChangeAction, ChangeFeedEntry, ChangeFeedQuery
from shared.core.dicomjson import first_value
from shared.core.errors import Conflict, Unavailable
from shared.core.model import InstanceRecord, InstanceUids, PendingInstance, SearchHit, StoredInstance
from shared.core.query import Query


def _now() -> datetime:
    return datetime.now(UTC)


def _str(attrs: dict[str, Any], tag: str, width: int) -> str | None:
    value = first_value(attrs, tag)
    if value is None:
        return None
    text = str(value).strip()
    return text[:width] if text else None


def _person_name(attrs: dict[str, Any], tag: str, width: int) -> str | None:
    """A PN in its PS3.5 form "Alphabetic=Ideographic=Phonetic" (trailing empty groups dropped), so
    that ideographic and phonetic queries find it too."""
    values = (attrs.get(tag) or {}).get("Value") or []
    value = values[0] if values else None
    if not isinstance(value, dict):
        return _str(attrs, tag, width)
    groups = [str(value.get(g) or "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
    text = "=".join(groups).rstrip("=").strip()
    return text[:width] if text else None


def _date(attrs: dict[str, Any], tag: str) -> str | None:
    value = _str(attrs, tag, 16)
    return date_key(value) if value else None


def _time(attrs: dict[str, Any], tag: str) -> str | None:
    value = _str(attrs, tag, 32)
    return time_key(value) if value else None


def _norm(name: str | None) -> str | None:
    """The first (alphabetic) component group, normalized: what name queries in Latin script match."""
    groups = name_groups(name) if name else []
    return groups[0][:324] if groups else None


def _groups(name: str | None) -> str | None:
    """Every component group, normalized, as `=G1=G2=`: what ideographic and phonetic queries match."""
    groups = name_groups(name) if name else []
    return f"={'='.join(groups)}="[:340] if groups else None


def _int(attrs: dict[str, Any], tag: str) -> int | None:
    value = first_value(attrs, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def study_columns(attrs: dict[str, Any]) -> dict[str, Any]:
    patient = _person_name(attrs, "00100010", 324)
    referring = _person_name(attrs, "00080090", 324)
    return {
        "patient_name": patient,
        "patient_name_norm": _norm(patient),
        "patient_name_groups": _groups(patient),
        "patient_id": _str(attrs, "00100020", 64),
        "patient_birth_date": _date(attrs, "00100030"),
        "patient_sex": _str(attrs, "00100040", 16),
        "study_date": _date(attrs, "00080020"),
        "study_time": _time(attrs, "00080030"),
        "accession_number": _str(attrs, "00080050", 16),
        "referring_physician_name": referring,
        "referring_physician_norm": _norm(referring),
        "referring_physician_groups": _groups(referring),
        "study_id": _str(attrs, "00200010", 16),
        "study_description": _str(attrs, "00081030", 64),
        "attrs": attrs,
    }


def series_columns(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "modality": _str(attrs, "00080060", 16),
        "series_number": _int(attrs, "00200011"),
        "series_description": _str(attrs, "0008103E", 64),
        "pps_start_date": _date(attrs, "00400244"),
        "pps_start_time": _time(attrs, "00400245"),
        "attrs": attrs,
    }


_STUDY_COLUMNS = tuple(study_columns({}))
_SERIES_COLUMNS = tuple(series_columns({}))


class SqlMetadataIndex:
    def __init__(self, url: str, partition: str = "default", engine: Engine | None = None) -> None:
        self._engine = engine or make_engine(url)
        self._partition = partition
        self._upsert = self._insert_factory()
        # Built once: executing a prebuilt statement with parameters skips SQLAlchemy's per-call
        # construction, a good part of the store's index time.
        study_insert = self._upsert(studies)
        self._upsert_study = study_insert.on_conflict_do_update(
            index_elements=["partition", "study_uid"],
            set_={name: study_insert.excluded[name] for name in (*_STUDY_COLUMNS, "updated_at")},
        ).returning(studies.c.id)
        series_insert = self._upsert(series)
        self._upsert_series = series_insert.on_conflict_do_update(
            index_elements=["study_pk", "series_uid"],
            set_={name: series_insert.excluded[name] for name in _SERIES_COLUMNS},
        ).returning(series.c.id)

    def _insert_factory(self) -> Any:
        if self._engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                if write:
                    conn = conn.execution_options(write=True)
                with conn.begin():
                    yield conn
        except (OperationalError, PoolTimeout) as exc:
            raise Unavailable("the index database is unavailable; retry later") from exc

    # --- store -------------------------------------------------------------------------------
    def _instance_row(self, conn: Connection, sop: str) -> Any:
        return conn.execute(
            select(instances).where(
                instances.c.partition == self._partition, instances.c.sop_instance_uid == sop
            )
        ).first()

    def begin_instance(self, record: InstanceRecord, *, replace: bool) -> PendingInstance:
        uids = record.uids
        try:
            with self._tx(write=True) as conn:
                row = self._instance_row(conn, uids.instance)
                if row is None:
                    conn.execute(
                        instances.insert().values(
                            partition=self._partition,
                            study_uid=uids.study,
                            series_uid=uids.series,
                            sop_instance_uid=uids.instance,
                            sop_class_uid=record.sop_class_uid,
                            status=PENDING,
                            version=record.version,
                            transfer_syntax=record.transfer_syntax,
                            number_of_frames=record.number_of_frames,
                            size=record.size,
                            updated_at=_now(),
                        )
                    )
                    return PendingInstance(uids, record.version, None)
                if (row.study_uid, row.series_uid) != (uids.study, uids.series):
                    raise Conflict("an instance with this SOP Instance UID exists in another study or series")
                if row.status == PENDING:
                    # A store that never committed (failed or crashed): take it over with a new version.
                    conn.execute(
                        update(instances)
                        .where(instances.c.id == row.id)
                        .values(version=record.version, sop_class_uid=record.sop_class_uid, updated_at=_now())
                    )
                    return PendingInstance(uids, record.version, None)
                if not replace:
                    raise Conflict("the instance already exists")
                conn.execute(
                    update(instances)
                    .where(instances.c.id == row.id)
                    .values(pending_version=record.version, updated_at=_now())
                )
                return PendingInstance(uids, record.version, row.version)
        except IntegrityError:
            raise Conflict("the instance is being stored by another request") from None

    def commit_instance(self, record: InstanceRecord, pending: PendingInstance) -> None:
        uids = record.uids
        now = _now()
        with self._tx(write=True) as conn:
            study_pk = conn.execute(
                self._upsert_study,
                {
                    "partition": self._partition,
                    "study_uid": uids.study,
                    "updated_at": now,
                    **study_columns(record.study_attrs),
                },
            ).scalar_one()
            self._write_name_words(conn, study_pk, record.study_attrs)
            series_pk = conn.execute(
                self._upsert_series,
                {"study_pk": study_pk, "series_uid": uids.series, **series_columns(record.series_attrs)},
            ).scalar_one()
            values = {
                "study_pk": study_pk,
                "series_pk": series_pk,
                "sop_class_uid": record.sop_class_uid,
                "instance_number": _int(record.instance_attrs, "00200013"),
                "transfer_syntax": record.transfer_syntax,
                "number_of_frames": record.number_of_frames,
                "size": record.size,
                "attrs": record.instance_attrs,
                "updated_at": now,
            }
            where = [instances.c.partition == self._partition, instances.c.sop_instance_uid == uids.instance]
            if pending.replaces is None:
                stmt = update(instances).where(
                    *where, instances.c.status == PENDING, instances.c.version == pending.version
                )
                values["status"] = CREATED
            else:
                stmt = update(instances).where(
                    *where, instances.c.status == CREATED, instances.c.pending_version == pending.version
                )
                values["version"] = pending.version
                values["pending_version"] = None
            if conn.execute(stmt.values(**values)).rowcount != 1:
                conn.rollback()
                raise Conflict("the instance was stored concurrently by another request")
            action = ChangeAction.CREATE if pending.replaces is None else ChangeAction.REPLACE
            changefeed.append_change(conn, self._partition, action, uids, pending.version, now)

    @staticmethod
    def _write_name_words(conn: Connection, study_pk: int, attrs: dict[str, Any]) -> None:
        rows = [
            {"study_pk": study_pk, "kind": kind, "word": word[:64]}
            for kind, tag in (("P", "00100010"), ("R", "00080090"))
            for word in dict.fromkeys(name_words(_person_name(attrs, tag, 324) or ""))
        ]
        existing = {
            (r.kind, r.word)
            for r in conn.execute(select(words.c.kind, words.c.word).where(words.c.study_pk == study_pk))
        }
        if existing == {(r["kind"], r["word"]) for r in rows}:
            return
        conn.execute(delete(words).where(words.c.study_pk == study_pk))
        if rows:
            conn.execute(words.insert(), rows)

    def abort_instance(self, pending: PendingInstance) -> None:
        where = [
            instances.c.partition == self._partition,
            instances.c.sop_instance_uid == pending.uids.instance,
        ]
        with self._tx(write=True) as conn:
            if pending.replaces is None:
                conn.execute(
                    delete(instances).where(
                        *where, instances.c.status == PENDING, instances.c.version == pending.version
                    )
                )
            else:
                conn.execute(
                    update(instances)
                    .where(*where, instances.c.pending_version == pending.version)
                    .values(pending_version=None)
                )

    # --- read --------------------------------------------------------------------------------
    def _select_instances(self, study: str, series_uid: str | None, instance: str | None) -> Any:
        conditions = [
            instances.c.partition == self._partition,
            instances.c.study_uid == study,
            instances.c.status == CREATED,
        ]
        if series_uid is not None:
            conditions.append(instances.c.series_uid == series_uid)
        if instance is not None:
            conditions.append(instances.c.sop_instance_uid == instance)
        return (
            select(instances)
            .where(and_(*conditions))
            .order_by(instances.c.series_pk, instances.c.instance_number, instances.c.id)
        )

    @staticmethod
    def _stored(row: Any) -> StoredInstance:
        return StoredInstance(
            uids=InstanceUids(row.study_uid, row.series_uid, row.sop_instance_uid),
            sop_class_uid=row.sop_class_uid,
            transfer_syntax=row.transfer_syntax,
            version=row.version,
            size=row.size,
            number_of_frames=row.number_of_frames,
        )

    def find_instances(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        with self._tx() as conn:
            return [self._stored(r) for r in conn.execute(self._select_instances(study, series, instance))]

    def search(self, query: Query) -> list[SearchHit]:
        with self._tx() as conn:
            return search(conn, self._partition, query)

    def delete(
        self, study: str, series_uid: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        with self._tx(write=True) as conn:
            rows = list(conn.execute(self._select_instances(study, series_uid, instance)))
            if not rows:
                return []
            now = _now()
            for row in rows:
                uids = InstanceUids(row.study_uid, row.series_uid, row.sop_instance_uid)
                changefeed.append_change(conn, self._partition, ChangeAction.DELETE, uids, row.version, now)
            ids = [r.id for r in rows]
            for start in range(0, len(ids), 500):
                conn.execute(delete(instances).where(instances.c.id.in_(ids[start : start + 500])))
            series_pks = {r.series_pk for r in rows}
            study_pks = {r.study_pk for r in rows}
            has_instances = exists().where(instances.c.series_pk == series.c.id)
            conn.execute(delete(series).where(series.c.id.in_(series_pks), ~has_instances))
            has_series = exists().where(series.c.study_pk == studies.c.id)
            empty = select(studies.c.id).where(studies.c.id.in_(study_pks), ~has_series)
            conn.execute(delete(words).where(words.c.study_pk.in_(empty)))
            conn.execute(delete(studies).where(studies.c.id.in_(study_pks), ~has_series))
            return [self._stored(r) for r in rows]

    # --- change feed -------------------------------------------------------------------------
    def read_changes(self, query: ChangeFeedQuery) -> list[ChangeFeedEntry]:
        with self._tx() as conn:
            return changefeed.read_changes(conn, self._partition, query)

    def latest_change(self) -> ChangeFeedEntry | None:
        with self._tx() as conn:
            return changefeed.latest_change(conn, self._partition)

    def unpublished_changes(self, limit: int = 100) -> list[ChangeFeedEntry]:
        with self._tx() as conn:
            return changefeed.unpublished_changes(conn, self._partition, limit)

    def mark_published(self, sequences: Sequence[int]) -> None:
        if sequences:
            with self._tx(write=True) as conn:
                changefeed.mark_published(conn, self._partition, sequences)

    # --- study-stable debounce ---------------------------------------------------------------
    def quiet_studies(self, cutoff: datetime, limit: int) -> list[tuple[str, int, datetime]]:
        with self._tx(write=True) as conn:  # write: it may move the watermark
            return stability.quiet_studies(conn, self._partition, cutoff, limit)

    def mark_study_stable(self, study: str, sequence: int) -> None:
        with self._tx(write=True) as conn:
            stability.mark_study_stable(conn, self._partition, study, sequence)

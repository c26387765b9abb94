"""MetadataIndex on SQL through SQLAlchemy Core: SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, delete, exists, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared.adapters import index_sql_changes as changefeed
from shared.adapters import index_sql_stability as stability
from shared.adapters.index_sql_columns import (
    integer,
    name_word_rows,
    series_columns,
    study_columns,
)
from shared.adapters.index_sql_raw import Bound, DbErrors, RawStatement
from shared.adapters.index_sql_schema import (
    ADVISORY_XACT_LOCK,
    CREATED,
    PENDING,
    changes,
    instances,
    make_engine,
    series,
    studies,
    writer_lock,
)
from shared.adapters.index_sql_schema import name_words as words
from shared.adapters.index_sql_search import search
from shared.core.batch import begin_each, commit_each
from shared.core.changefeed import ChangeAction, ChangeFeedEntry, ChangeFeedQuery
from shared.core.errors import Conflict, Unavailable
from shared.core.model import InstanceRecord, InstanceUids, PendingInstance, SearchHit, StoredInstance
from shared.core.query import Query


def _now() -> datetime:
    return datetime.now(UTC)


_STUDY_COLUMNS = tuple(study_columns({}))
_SERIES_COLUMNS = tuple(series_columns({}))


# The statements of the store path, built once and executed with a parameter dict: building them
# per call (coercions, cache keys) cost more CPU than the database did. SET values are bound by
# column name, so the WHERE parameters of an UPDATE are named `w_*`.
def _set(*names: str) -> dict[str, Any]:
    return {name: bindparam(name) for name in names}


_THIS_INSTANCE = (
    instances.c.partition == bindparam("w_partition"),
    instances.c.sop_instance_uid == bindparam("w_sop"),
)
_THIS_ROW = instances.c.id == bindparam("w_id")
# FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers): the row read is the
# row updated, not one a concurrent commit or takeover changes in between.
_INSTANCE_ROW = (
    select(
        instances.c.id, instances.c.study_uid, instances.c.series_uid, instances.c.status, instances.c.version
    )
    .where(*_THIS_INSTANCE)
    .with_for_update()
)
_TAKE_OVER_PENDING = update(instances).where(_THIS_ROW).values(_set("version", "sop_class_uid", "updated_at"))
_BEGIN_REPLACE = update(instances).where(_THIS_ROW).values(_set("pending_version", "updated_at"))
_COMMITTED = _set(
    "study_pk", "series_pk", "sop_class_uid", "instance_number", "transfer_syntax", "number_of_frames",
    "size", "attrs", "updated_at",
)  # fmt: skip
_IS_PENDING = (*_THIS_INSTANCE, instances.c.status == PENDING, instances.c.version == bindparam("w_version"))
_COMMIT_CREATE = update(instances).where(*_IS_PENDING).values(**_COMMITTED, status=CREATED)
_COMMIT_REPLACE = (
    update(instances)
    .where(
        *_THIS_INSTANCE, instances.c.status == CREATED, instances.c.pending_version == bindparam("w_version")
    )
    .values(**_COMMITTED, version=bindparam("version"), pending_version=None)
)
_ABORT_CREATE = delete(instances).where(*_IS_PENDING)
_ABORT_REPLACE = (
    update(instances)
    .where(*_THIS_INSTANCE, instances.c.pending_version == bindparam("w_version"))
    .values(pending_version=None)
)
# The usual commit, into a study that exists with the same names (so the same words): one UPDATE.
_SAME_STUDY_NAMES = (
    studies.c.partition == bindparam("w_partition"),
    studies.c.study_uid == bindparam("w_study"),
    studies.c.patient_name.is_not_distinct_from(bindparam("w_patient_name")),
    studies.c.referring_physician_name.is_not_distinct_from(bindparam("w_referring_name")),
)
_UPDATE_SAME_NAMES = (
    update(studies)
    .where(*_SAME_STUDY_NAMES)
    .values(_set(*_STUDY_COLUMNS, "updated_at"))
    .returning(studies.c.id)
)
# Usual above all: the study's indexed columns are what they were, so only its other columns are
# set. SQLite rewrites the entries of every index with a column in SET, equal values or not: the
# UPDATE above dirties the studies table and its five indexes, this one the table alone.
_STUDY_KEYS = ("patient_id", "accession_number", "study_date")  # indexed (the names: above)
_STUDY_UNINDEXED = tuple(
    name
    for name in _STUDY_COLUMNS
    if name not in _STUDY_KEYS and not name.startswith(("patient_name", "referring_physician"))
)
_UPDATE_SAME_KEYS = (
    update(studies)
    .where(
        *_SAME_STUDY_NAMES,
        *(studies.c[name].is_not_distinct_from(bindparam(f"w_{name}")) for name in _STUDY_KEYS),
    )
    .values(_set(*_STUDY_UNINDEXED, "updated_at"))
    .returning(studies.c.id)
)
_DELETE_WORDS = delete(words).where(words.c.study_pk == bindparam("w_study_pk"))
_INSERT_WORDS = words.insert()


# PostgreSQL's answers to two transactions that got in each other's way (deadlock_detected,
# serialization_failure): the batch is retried item by item, not reported as an outage.
_RACE_SQLSTATES = frozenset({"40P01", "40001"})


def _lost_a_race(exc: BaseException) -> bool:
    cause = exc.__cause__
    return (
        getattr(cause, "sqlstate", None) in _RACE_SQLSTATES
        or getattr(getattr(cause, "orig", None), "sqlstate", None) in _RACE_SQLSTATES
    )


@dataclass(frozen=True, slots=True)
class _StudyWrite:
    """A study row's upsert: the usual UPDATE bound, and the values of the others."""

    study_uid: str
    values: dict[str, Any]
    where: dict[str, Any]
    same_keys: Bound


@dataclass(frozen=True, slots=True)
class _CommitPlan:
    study: _StudyWrite
    series: Bound
    instance: Bound
    change: Bound


class _OneFailed(Exception):
    """An item of a batch commit lost its pending instance: the batch is undone and retried item by item."""


class _StorePath:
    """The store path's statements, compiled once for the index's dialect (see index_sql_raw)."""

    def __init__(self, index: SqlMetadataIndex) -> None:
        dialect = index._engine.dialect
        self.insert_pending = RawStatement(index._insert_pending, dialect)
        self.instance_row = RawStatement(_INSTANCE_ROW, dialect)
        self.take_over_pending = RawStatement(_TAKE_OVER_PENDING, dialect)
        self.begin_replace = RawStatement(_BEGIN_REPLACE, dialect)
        self.update_same_names = RawStatement(_UPDATE_SAME_NAMES, dialect)
        self.update_same_keys = RawStatement(_UPDATE_SAME_KEYS, dialect)
        self.insert_study = RawStatement(index._insert_study, dialect)
        self.upsert_study = RawStatement(index._upsert_study, dialect)
        self.upsert_series = RawStatement(index._upsert_series, dialect)
        self.commit_create = RawStatement(_COMMIT_CREATE, dialect)
        self.commit_replace = RawStatement(_COMMIT_REPLACE, dialect)
        self.delete_words = RawStatement(_DELETE_WORDS, dialect)
        self.insert_words = RawStatement(_INSERT_WORDS, dialect)
        self.append_change = RawStatement(changes.insert(), dialect)
        self.change_lock = RawStatement(ADVISORY_XACT_LOCK, dialect) if dialect.name == "postgresql" else None


class SqlMetadataIndex:
    def __init__(self, url: str, partition: str = "default", engine: Engine | None = None) -> None:
        self._engine = engine or make_engine(url)
        self._writer = writer_lock(self._engine)
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._partition = partition
        self._upsert = self._insert_factory()
        self._insert_pending = self._upsert(instances).on_conflict_do_nothing(
            index_elements=["partition", "sop_instance_uid"]
        )
        self._insert_study = (
            self._upsert(studies)
            .on_conflict_do_nothing(index_elements=["partition", "study_uid"])
            .returning(studies.c.id)
        )
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
        self._errors = DbErrors(self._engine.dialect)
        self._raw = _StorePath(self)

    def _insert_factory(self) -> Any:
        if self._engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Connection]:
        try:
            with self._writer if write else nullcontext(), self._engine.connect() as conn:
                if write:
                    conn = conn.execution_options(write=True)
                with conn.begin():
                    yield conn
        except (OperationalError, PoolTimeout, *self._errors.operational) as exc:
            raise Unavailable("the index database is unavailable; retry later") from exc

    @contextmanager
    def _store_tx(self) -> Iterator[Any]:
        """A write transaction of the store path: a DB-API cursor on a pooled connection.

        Committed when the block ends, rolled back when it raises. The store path's statements
        are raw already (`_StorePath`); checking a connection out of the pool as an SQLAlchemy
        `Connection` and beginning through it cost more than the transaction's own BEGIN and
        COMMIT, twice per instance stored. A connection that failed is dropped, not pooled.

        SQLite: writers of every process queue on the file lock, so it is held for the
        transaction alone; the connection is taken from the pool and returned within this
        process's turn, outside it (a process's waiting writers then hold one connection, not one each)."""
        writer = self._writer
        try:
            writer.take_turn()
            try:
                dbapi = self._engine.raw_connection()
                try:
                    writer.lock_file()
                    try:
                        if self._sqlite:
                            dbapi.driver_connection.execute("BEGIN IMMEDIATE")  # as _sqlite_begin does
                        cursor = dbapi.cursor()
                        try:
                            yield cursor
                        finally:
                            cursor.close()
                        dbapi.commit()
                    except BaseException as exc:
                        try:
                            dbapi.rollback()
                        except Exception:
                            dbapi.invalidate()
                        else:
                            if isinstance(exc, self._errors.operational):
                                dbapi.invalidate()  # lost or broken: the pool makes a new one
                        raise
                    finally:
                        writer.unlock_file()
                finally:
                    dbapi.close()
            finally:
                writer.end_turn()
        except (OperationalError, PoolTimeout, *self._errors.operational) as exc:
            raise Unavailable("the index database is unavailable; retry later") from exc

    # --- store -------------------------------------------------------------------------------
    # Each statement's values are bound (JSON encoded, types processed) before its transaction:
    # SQLite writers of every worker process wait for the one in its transaction, so what is done
    # inside it is the SQL alone.
    def begin_instance(self, record: InstanceRecord, *, replace: bool) -> PendingInstance:
        now = _now()
        insert = self._bind_pending(record, now)
        try:
            with self._store_tx() as cur:
                return self._begin(cur, record, insert, replace, now)
        except (IntegrityError, *self._errors.integrity):
            raise Conflict("the instance is being stored by another request") from None

    def begin_instances(
        self, records: Sequence[InstanceRecord], *, replace: bool
    ) -> list[PendingInstance | Exception]:
        """One write transaction for all; should it fail as a whole (a PostgreSQL race on one
        insert), each record is begun on its own so that no record decides another's answer."""
        if len(records) == 1:
            return begin_each(self, records, replace=replace)
        now = _now()
        # In SOP Instance UID order: two batches that insert some of the same instances then lock
        # their rows in the same order, so that on PostgreSQL one waits for the other, never both.
        order = sorted(range(len(records)), key=lambda k: records[k].uids.instance)
        inserts = [self._bind_pending(record, now) for record in records]
        results: dict[int, PendingInstance | Exception] = {}
        try:
            with self._store_tx() as cur:
                for k in order:
                    try:
                        results[k] = self._begin(cur, records[k], inserts[k], replace, now)
                    except Conflict as exc:  # raised before this record wrote anything
                        results[k] = exc
        except Unavailable as exc:
            if not _lost_a_race(exc):
                return [exc] * len(records)
            return begin_each(self, records, replace=replace)
        except Exception:
            return begin_each(self, records, replace=replace)
        return [results[k] for k in range(len(records))]

    def _bind_pending(self, record: InstanceRecord, now: datetime) -> Bound:
        uids = record.uids
        return self._raw.insert_pending.bind(
            {
                "partition": self._partition,
                "study_uid": uids.study,
                "series_uid": uids.series,
                "sop_instance_uid": uids.instance,
                "sop_class_uid": record.sop_class_uid,
                "status": PENDING,
                "version": record.version,
                "transfer_syntax": record.transfer_syntax,
                "number_of_frames": record.number_of_frames,
                "size": record.size,
                "updated_at": now,
            }
        )

    def _begin(
        self, cur: Any, record: InstanceRecord, insert: Bound, replace: bool, now: datetime
    ) -> PendingInstance:
        uids = record.uids
        raw = self._raw
        if insert.run(cur).rowcount == 1:
            return PendingInstance(uids, record.version, None)
        row = raw.instance_row.run(cur, {"w_partition": self._partition, "w_sop": uids.instance}).fetchone()
        if row is None:  # PostgreSQL: the row that stopped the insert is gone (aborted) since
            raise Conflict("the instance is being stored by another request")
        row_id, study_uid, series_uid, status, version = row
        if (study_uid, series_uid) != (uids.study, uids.series):
            raise Conflict("an instance with this SOP Instance UID exists in another study or series")
        if status == PENDING:
            # A store that never committed (failed or crashed): take it over with a new version.
            raw.take_over_pending.run(
                cur,
                {
                    "w_id": row_id,
                    "version": record.version,
                    "sop_class_uid": record.sop_class_uid,
                    "updated_at": now,
                },
            )
            return PendingInstance(uids, record.version, None)
        if not replace:
            raise Conflict("the instance already exists")
        raw.begin_replace.run(cur, {"w_id": row_id, "pending_version": record.version, "updated_at": now})
        return PendingInstance(uids, record.version, version)

    def commit_instance(self, record: InstanceRecord, pending: PendingInstance) -> None:
        plan = self._plan_commit(record, pending, _now())
        with self._store_tx() as cur:
            self._lock_changes(cur)
            if not self._commit(cur, plan, _now()):  # raised inside: rolled back
                raise Conflict("the instance was stored concurrently by another request")

    def commit_instances(
        self, items: Sequence[tuple[InstanceRecord, PendingInstance]]
    ) -> list[Exception | None]:
        """One write transaction for all. Should one item fail (a concurrent store won it), the
        transaction is undone and each item is committed on its own, so the others still commit."""
        if len(items) == 1:
            return commit_each(self, items)
        now = _now()
        plans = [self._plan_commit(record, pending, now) for record, pending in items]
        try:
            with self._store_tx() as cur:
                self._lock_changes(cur)
                committed_at = _now()
                for plan in plans:
                    if not self._commit(cur, plan, committed_at):
                        raise _OneFailed
        except Unavailable as exc:
            if not _lost_a_race(exc):
                return [exc] * len(items)
            return commit_each(self, items)
        except Exception:
            return commit_each(self, items)
        return [None] * len(items)

    def _lock_changes(self, cur: Any) -> None:
        """PostgreSQL: take the change feed's lock first, before any row lock. Sequences are
        handed out at insert time, not at commit: without it a reader could page past a lower
        sequence that commits later and never see it. Taken first (as delete does), every commit
        queues on it before locking a study, series or instance row, so no two can deadlock."""
        if self._raw.change_lock is not None:
            self._raw.change_lock.run(cur, {"key": changefeed.CHANGE_LOCK}).fetchall()

    def _plan_commit(self, record: InstanceRecord, pending: PendingInstance, now: datetime) -> _CommitPlan:
        """The statements of an instance's commit, bound; the keys of its study and series rows,
        and the change's time (taken in the transaction, so that times follow sequences), are late."""
        uids = record.uids
        raw = self._raw
        series_params = {"study_pk": 0, "series_uid": uids.series, **series_columns(record.series_attrs)}
        values = {
            "w_partition": self._partition,
            "w_sop": uids.instance,
            "w_version": pending.version,
            "study_pk": 0,
            "series_pk": 0,
            "sop_class_uid": record.sop_class_uid,
            "instance_number": integer(record.instance_attrs, "00200013"),
            "transfer_syntax": record.transfer_syntax,
            "number_of_frames": record.number_of_frames,
            "size": record.size,
            "attrs": record.instance_attrs,
            "updated_at": now,
        }
        if pending.replaces is None:
            stmt, action = raw.commit_create, ChangeAction.CREATE
        else:
            stmt, action = raw.commit_replace, ChangeAction.REPLACE
            values["version"] = pending.version
        change = changefeed.change_row(self._partition, action, uids, pending.version, now)
        return _CommitPlan(
            study=self._plan_study(uids.study, study_columns(record.study_attrs), now),
            series=raw.upsert_series.bind(series_params, late=("study_pk",)),
            instance=stmt.bind(values, late=("study_pk", "series_pk")),
            change=raw.append_change.bind(change, late=("timestamp",)),
        )

    def _commit(self, cur: Any, plan: _CommitPlan, now: datetime) -> bool:
        """Write the study, series and instance rows and the change; False if the pending instance
        is no longer this one (the caller must then roll back)."""
        study_pk = self._write_study(cur, plan.study)
        series_pk = plan.series.run(cur, {"study_pk": study_pk}).fetchone()[0]
        if plan.instance.run(cur, {"study_pk": study_pk, "series_pk": series_pk}).rowcount != 1:
            return False
        plan.change.run(cur, {"timestamp": now})
        return True

    def _plan_study(self, study_uid: str, columns: dict[str, Any], now: datetime) -> _StudyWrite:
        values = {**columns, "updated_at": now}
        where = {
            "w_partition": self._partition,
            "w_study": study_uid,
            "w_patient_name": columns["patient_name"],
            "w_referring_name": columns["referring_physician_name"],
        }
        keys = {f"w_{name}": columns[name] for name in _STUDY_KEYS}
        same_keys = self._raw.update_same_keys.bind({**values, **where, **keys})
        return _StudyWrite(study_uid, values, where, same_keys)

    def _write_study(self, cur: Any, study: _StudyWrite) -> int:
        """Upsert the study row and keep its name words those of its names; return its key.

        The words are a function of the two name columns, so a study whose names did not change
        keeps its words untouched: that usual case is one UPDATE, without reading the words."""
        raw = self._raw
        row = study.same_keys.run(cur).fetchone()
        if row is not None:
            return int(row[0])
        values, where = study.values, study.where
        row = raw.update_same_names.run(cur, {**values, **where}).fetchone()
        if row is not None:
            return int(row[0])
        values = {**values, "partition": self._partition, "study_uid": study.study_uid}
        row = raw.insert_study.run(cur, values).fetchone()
        if row is None:  # the study exists with other names: replace its words
            study_pk = raw.upsert_study.run(cur, values).fetchone()[0]
            raw.delete_words.run(cur, {"w_study_pk": study_pk})
        else:
            study_pk = row[0]
        rows = name_word_rows(study_pk, values["patient_name"], values["referring_physician_name"])
        if rows:
            raw.insert_words.run_many(cur, rows)
        return int(study_pk)

    def abort_instance(self, pending: PendingInstance) -> None:
        params = {
            "w_partition": self._partition,
            "w_sop": pending.uids.instance,
            "w_version": pending.version,
        }
        with self._tx(write=True) as conn:
            conn.execute(_ABORT_CREATE if pending.replaces is None else _ABORT_REPLACE, params)

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

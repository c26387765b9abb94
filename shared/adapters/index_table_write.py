"""Writes of the Table index: the two-phase store (begin / commit / abort), delete, key upkeep.

Concurrency is optimistic: every change of a row is conditional on the ETag it was read with, and
the rows of a study (study, series, instances) change together in one entity group transaction,
so counts never drift. A condition that fails means another request got there first: re-read and
decide again (or answer Conflict where the SQL index does).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from shared.adapters import index_table_changes as feed
from shared.adapters.index_table_rows import (
    CLAIM_RK,
    COMMITTED,
    PENDING,
    STUDY_RK,
    KeyRows,
    attrs_of,
    first_number,
    instance_rk,
    json_values,
    key_rows,
    row_keys,
    series_lookup_rk,
    series_rk,
    study_pk,
    uid_pk,
)
from shared.adapters.index_table_store import (
    Entity,
    Tables,
    dump_json,
    load_json,
    replace_op,
)
from shared.core.changefeed import ChangeAction
from shared.core.errors import Conflict, Unavailable
from shared.core.model import InstanceRecord, PendingInstance

log = logging.getLogger(__name__)

ATTEMPTS = 12
BUSY_ATTEMPTS = 40  # commits and deletes in one study wait for each other (a STOW of many parts)
STUDIES, UIDS, KEYS = Tables.STUDIES, Tables.UIDS, Tables.KEYS
INSTANCE_PROPS = ["se", "sop", "s", "v", "pv", "cls", "ts", "nf", "size", "num", "c"]


def now() -> str:
    """A creation stamp: orders rows by age (ties are broken by UID)."""
    return f"{time.time_ns():020d}"


def _backoff(attempt: int) -> None:
    """Exponential back-off with full jitter, so writers that collided do not collide again."""
    if attempt:
        time.sleep(random.uniform(0, min(0.004 * 2**attempt, 0.5)))


@dataclass(frozen=True, slots=True)
class Scope:
    tables: Tables
    partition: str  # already a key part
    name: str = "default"  # the partition as given (change feed entries carry it)


# --- begin / commit / abort ---------------------------------------------------------------------


def _claim(s: Scope, record: InstanceRecord, *, expect: bool = False) -> None:
    """The SOP Instance UID's claim by this study and series (made if missing); Conflict if the UID
    belongs to another study or series. `expect`: the claim should exist (read it first)."""
    u = record.uids
    pk = uid_pk(s.partition, u.instance)
    for attempt in range(ATTEMPTS):
        claim = s.tables.get(UIDS, pk, CLAIM_RK) if expect or attempt else None
        if claim is None:
            if s.tables.create(UIDS, {"PartitionKey": pk, "RowKey": CLAIM_RK, "st": u.study, "se": u.series}):
                return
            continue
        if (claim["st"], claim["se"]) != (u.study, u.series):
            raise Conflict("an instance with this SOP Instance UID exists in another study or series")
        return
    raise Conflict("the instance is being stored by another request")


def begin(s: Scope, record: InstanceRecord, replace: bool) -> PendingInstance:
    u = record.uids
    _claim(s, record)
    pk, rk = study_pk(s.partition, u.study), instance_rk(u.series, u.instance)
    fresh: Entity = {
        "PartitionKey": pk,
        "RowKey": rk,
        "se": u.series,
        "sop": u.instance,
        "s": PENDING,
        "v": record.version,
        "cls": record.sop_class_uid,
        "ts": record.transfer_syntax,
        "nf": record.number_of_frames,
        "size": str(record.size),
        "c": now(),
    }
    for attempt in range(ATTEMPTS):
        _backoff(attempt)
        if s.tables.create(STUDIES, fresh):
            return PendingInstance(u, record.version, None)
        row = s.tables.get(STUDIES, pk, rk, select=INSTANCE_PROPS)
        if row is None:
            continue
        if row["s"] == PENDING:
            # A store that never committed (failed or crashed): take it over with a new version.
            change = {"PartitionKey": pk, "RowKey": rk, "v": record.version, "cls": record.sop_class_uid}
            if s.tables.merge(STUDIES, change, row["etag"]):
                return PendingInstance(u, record.version, None)
            continue
        if not replace:
            raise Conflict("the instance already exists")
        if s.tables.merge(STUDIES, {"PartitionKey": pk, "RowKey": rk, "pv": record.version}, row["etag"]):
            return PendingInstance(u, record.version, row["v"])
    raise Conflict("the instance is being stored by another request")


def _is_pending(row: Entity | None, pending: PendingInstance) -> bool:
    if row is None:
        return False
    if pending.replaces is None:
        return bool(row["s"] == PENDING and row["v"] == pending.version)
    return bool(row["s"] == COMMITTED and row.get("pv") == pending.version)


def _modalities(attrs: dict[str, Any]) -> list[str]:
    return sorted({m.strip() for m in json_values(attrs, "Modality") if m.strip()})


def commit(s: Scope, record: InstanceRecord, pending: PendingInstance) -> None:
    u = record.uids
    _claim(s, record, expect=True)  # a concurrent abort of the same UID may have released it
    pk = study_pk(s.partition, u.study)
    keys = (instance_rk(u.series, u.instance), series_rk(u.series), STUDY_RK)
    is_new = pending.replaces is None
    action = ChangeAction.CREATE if is_new else ChangeAction.REPLACE
    change = [(action.value, u.series, u.instance, pending.version)]
    intent = feed.intend(s, u.study)
    for attempt in range(BUSY_ATTEMPTS):
        _backoff(attempt)
        inst, series, study = s.tables.map(lambda rk: s.tables.get(STUDIES, pk, rk), keys)
        if not _is_pending(inst, pending):
            feed.forget(s, intent)
            raise Conflict("the instance was stored concurrently by another request")
        assert inst is not None
        stamp = now()
        new_inst: Entity = {
            "PartitionKey": pk,
            "RowKey": keys[0],
            "se": u.series,
            "sop": u.instance,
            "s": COMMITTED,
            "v": pending.version,
            "cls": record.sop_class_uid,
            "ts": record.transfer_syntax,
            "nf": record.number_of_frames,
            "size": str(record.size),
            "num": _text(first_number(record.instance_attrs, "InstanceNumber")),
            "c": inst["c"],
        }
        dump_json(new_inst, "a", record.instance_attrs)
        mods = _modalities(record.series_attrs)
        new_series: Entity = {
            "PartitionKey": pk,
            "RowKey": keys[1],
            "se": u.series,
            "c": series["c"] if series else stamp,
            "ni": (series["ni"] if series else 0) + is_new,
            "num": _text(first_number(record.series_attrs, "SeriesNumber")),
        }
        dump_json(new_series, "mods", mods)
        dump_json(new_series, "a", record.series_attrs)
        counts = Counter(load_json(study, "mc", {}) if study else {})
        if series:
            counts.subtract(load_json(series, "mods", []))
        counts.update(mods)
        created = study["c"] if study else stamp
        rows = key_rows(s.partition, u.study, created, record.study_attrs, dict(counts))
        new_study = _study_entity(
            pk,
            u.study,
            created,
            (study["ns"] if study else 0) + (series is None),
            (study["ni"] if study else 0) + is_new,
            dict(counts),
            rows,
        )
        dump_json(new_study, "a", record.study_attrs)
        ops = [
            replace_op(new_inst, inst["etag"]),
            replace_op(new_series, series["etag"] if series else None),
            replace_op(new_study, study["etag"] if study else None),
            feed.outbox_op(pk, intent, change),
        ]
        if s.tables.transact(STUDIES, ops) is not None:
            break
    else:
        feed.forget(s, intent)
        raise Unavailable("the study is being changed by too many requests; retry later")
    feed.publish(s, intent, change)
    if series is None:
        lookup = {
            "PartitionKey": uid_pk(s.partition, u.series),
            "RowKey": series_lookup_rk(u.study),
            "st": u.study,
        }
        s.tables.upsert(UIDS, lookup)
    if study is None or study.get("ixh") != rows.digest:
        old = {(pk_, rk_) for pk_, rk_ in load_json(study, "ix", [])} if study else set()
        sync_keys(s, u.study, rows, old)


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


def _study_entity(
    pk: str, study: str, created: str, n_series: int, n_instances: int, counts: dict[str, int], rows: KeyRows
) -> Entity:
    entity: Entity = {
        "PartitionKey": pk,
        "RowKey": STUDY_RK,
        "st": study,
        "c": created,
        "ns": n_series,
        "ni": n_instances,
        "ixh": rows.digest,
    }
    dump_json(entity, "mc", {m: n for m, n in counts.items() if n > 0})
    dump_json(entity, "ix", row_keys(rows.rows))
    return entity


def abort(s: Scope, pending: PendingInstance) -> None:
    u = pending.uids
    pk, rk = study_pk(s.partition, u.study), instance_rk(u.series, u.instance)
    for attempt in range(ATTEMPTS):
        _backoff(attempt)
        row = s.tables.get(STUDIES, pk, rk, select=INSTANCE_PROPS)
        if not _is_pending(row, pending):
            return  # already gone, or taken over by another store: nothing of ours to undo
        assert row is not None
        if pending.replaces is None:
            if s.tables.delete(STUDIES, pk, rk, row["etag"]):
                _release_claim(s, u.study, u.series, u.instance)
                return
        elif s.tables.merge(STUDIES, {"PartitionKey": pk, "RowKey": rk, "pv": ""}, row["etag"]):
            return


def _release_claim(s: Scope, study: str, series: str, sop: str) -> None:
    pk = uid_pk(s.partition, sop)
    claim = s.tables.get(UIDS, pk, CLAIM_RK)
    if claim is not None and (claim["st"], claim["se"]) == (study, series):
        s.tables.delete(UIDS, pk, CLAIM_RK, claim["etag"])


# --- the Keys rows of a study -------------------------------------------------------------------


def sync_keys(s: Scope, study: str, rows: KeyRows, stale: set[tuple[str, str]]) -> None:
    """Make the study's Keys rows those of `rows`, then check the study did not change meanwhile
    (a concurrent commit may have written older rows after ours): redo from the study row if so."""
    pk = study_pk(s.partition, study)
    seen = set(stale)
    for _ in range(ATTEMPTS):
        s.tables.write_all(KEYS, rows.rows.values(), seen - rows.rows.keys())
        seen |= rows.rows.keys()
        row = s.tables.get(STUDIES, pk, STUDY_RK)
        if row is None:
            s.tables.write_all(KEYS, [], seen)
            return
        if row.get("ixh") == rows.digest:
            return
        rows = key_rows(s.partition, study, row["c"], attrs_of(row), load_json(row, "mc", {}))
    log.warning("the search keys of a study kept changing; they are repaired by its next change")

"""Deletes in the Table index: instances leave in transactions that keep the study's counts right
and record each instance's delete in the study's outbox (index_table_changes), then reach the feed."""

from __future__ import annotations

from collections import Counter
from typing import Any

from shared.adapters import index_table_changes as feed
from shared.adapters.index_table_rows import (
    COMMITTED,
    STUDY_RK,
    attrs_of,
    instance_rk,
    key_rows,
    series_lookup_rk,
    study_pk,
    uid_pk,
)
from shared.adapters.index_table_store import BATCH_LIMIT, Entity, delete_op, load_json, replace_op
from shared.adapters.index_table_write import (
    BUSY_ATTEMPTS,
    INSTANCE_PROPS,
    KEYS,
    STUDIES,
    UIDS,
    Scope,
    _backoff,
    _release_claim,
    _study_entity,
    sync_keys,
)
from shared.core.changefeed import ChangeAction
from shared.core.errors import Unavailable

# --- delete -------------------------------------------------------------------------------------


def delete(s: Scope, study: str, series: str | None, instance: str | None) -> list[Entity]:
    """Remove the committed instances in scope; returns their rows (with "st" set)."""
    pk = study_pk(s.partition, study)
    removed: list[Entity] = []
    gone_series: set[str] = set()
    first_study: Entity | None = None
    study_row: Entity | None = None
    intents: list[feed.Intent] = []  # an intent not used by a committed batch yet
    for attempt in range(BUSY_ATTEMPTS):
        _backoff(attempt)
        study_row = s.tables.get(STUDIES, pk, STUDY_RK)
        first_study = first_study or (dict(study_row) if study_row else None)
        targets = [r for r in instance_rows(s, pk, series, instance) if r["s"] == COMMITTED]
        if not targets or study_row is None:
            break
        series_rows = {r["se"]: r for r in s.tables.prefix(STUDIES, pk, "R|")}
        done = _delete_batches(s, pk, study, study_row, series_rows, targets, removed, gone_series, intents)
        if done:
            break
    else:
        for intent in intents:
            feed.forget(s, intent)
        raise Unavailable("the study is being changed by too many requests; retry later")
    for intent in intents:
        feed.forget(s, intent)
    if not removed:
        return []
    s.tables.map(lambda r: _release_claim(s, study, r["se"], r["sop"]), removed)
    for uid in gone_series:
        s.tables.delete(UIDS, uid_pk(s.partition, uid), series_lookup_rk(study))
    after = s.tables.get(STUDIES, pk, STUDY_RK)
    old = {(a, b) for a, b in load_json(first_study, "ix", [])} if first_study else set()
    if after is None:
        last = {(a, b) for a, b in load_json(study_row, "ix", [])} if study_row else set()
        s.tables.write_all(KEYS, [], old | last)
    elif first_study is None or after.get("ixh") != first_study.get("ixh"):
        sync_keys(
            s,
            study,
            key_rows(s.partition, study, after["c"], attrs_of(after), load_json(after, "mc", {})),
            old,
        )
    return removed


def instance_rows(s: Scope, pk: str, series: str | None, instance: str | None) -> list[Entity]:
    """The instance rows (without attrs) of a study, a series or one instance."""
    if series is not None and instance is not None:
        row = s.tables.get(STUDIES, pk, instance_rk(series, instance), select=INSTANCE_PROPS)
        return [row] if row else []
    start = "I|" if series is None else instance_rk(series, "")
    rows = list(s.tables.prefix(STUDIES, pk, start, select=INSTANCE_PROPS))
    return [r for r in rows if instance is None or r["sop"] == instance]


def _next_batch(pending: list[Entity]) -> list[Entity]:
    """Instances for one transaction: they, their series, the study and the outbox row make at most
    100 operations, and their entries fit one append to the feed."""
    batch: list[Entity] = []
    touched: set[str] = set()
    while (
        pending
        and len(batch) < feed.MAX_ENTRIES
        and len(batch) + len(touched | {pending[0]["se"]}) + 1 < BATCH_LIMIT  # + study + outbox
    ):
        batch.append(pending.pop(0))
        touched.add(batch[-1]["se"])
    return batch


def _delete_batches(
    s: Scope,
    pk: str,
    study: str,
    study_row: Entity,
    series_rows: dict[str, Entity],
    targets: list[Entity],
    removed: list[Entity],
    gone_series: set[str],
    intents: list[feed.Intent],
) -> bool:
    """Delete `targets` in transactions that keep the counts right; False if a row changed meanwhile."""
    pending = list(targets)
    while pending:
        batch = _next_batch(pending)
        ops: list[tuple[Any, ...]] = [delete_op(pk, r["RowKey"], r["etag"]) for r in batch]
        counts = Counter(load_json(study_row, "mc", {}))
        changed: list[tuple[str, Entity | None]] = []  # series uid -> its new row, None if removed
        n_series = study_row["ns"]
        for uid, n in Counter(r["se"] for r in batch).items():
            old = series_rows.get(uid)
            if old is None:
                return False
            if old["ni"] <= n:
                changed.append((uid, None))
                n_series -= 1
                counts.subtract(load_json(old, "mods", []))
                ops.append(delete_op(pk, old["RowKey"], old["etag"]))
            else:
                changed.append((uid, {**old, "ni": old["ni"] - n}))
                ops.append(replace_op({**old, "ni": old["ni"] - n}, old["etag"]))
        n_instances = study_row["ni"] - len(batch)
        new_study: Entity | None = None
        if n_series <= 0 or n_instances <= 0:
            ops.append(delete_op(pk, STUDY_RK, study_row["etag"]))
        else:
            rows = key_rows(s.partition, study, study_row["c"], attrs_of(study_row), dict(counts))
            new_study = _study_entity(pk, study, study_row["c"], n_series, n_instances, dict(counts), rows)
            new_study.update((k, v) for k, v in study_row.items() if k.startswith("a"))  # the attrs
            ops.append(replace_op(new_study, study_row["etag"]))
        if not intents:
            intents.append(feed.intend(s, study))
        changes = [(ChangeAction.DELETE.value, r["se"], r["sop"], r["v"]) for r in batch]
        ops.append(feed.outbox_op(pk, intents[0], changes))
        etags = s.tables.transact(STUDIES, ops)
        if etags is None:
            return False  # the intent is kept for the next attempt
        etags.pop()  # the outbox row's
        feed.publish(s, intents.pop(), changes)
        removed.extend({**r, "st": study} for r in batch)
        for (uid, new), etag in zip(changed, etags[len(batch) : len(batch) + len(changed)], strict=True):
            if new is None:
                gone_series.add(uid)
                series_rows.pop(uid, None)
            else:
                series_rows[uid] = {**new, "etag": etag}
        if new_study is None:
            return True
        study_row.clear()
        study_row.update(new_study, etag=etags[-1])
    return True

"""The change feed of the Table index: an outbox in the study's transaction, then one global feed.

A Table transaction stays in one partition, and the feed needs one order across all studies, so a
change reaches the feed in three steps (docs/table-index.md, "Change feed"):

1. `intend`: an intent row `P|<time>|<token>` in the feed partition says "study S may commit
   a change with this token" (written before the study transaction).
2. The study transaction (commit or a delete batch) also writes the outbox row `X|<token>` in the
   study partition: the durable record of the changes, committed with them or not at all.
3. `publish`: one transaction in the feed partition takes the next sequences (the counter row `N`,
   ETag-conditioned), inserts the entries `E|<sequence>`, moves the study's stability rows and
   deletes the intent (which fails if it is gone: whoever deleted it appended the changes, so
   they are appended exactly once). Then the outbox row is deleted.

If a process dies after step 2, `sweep` (run by `unpublished_changes` and `quiet_studies`, the
publisher's paths) finds the intent, reads the outbox row and appends it: nothing committed is
lost, but it gets a later sequence than changes committed after it. An intent without an outbox
row is a change that did not commit; it is dropped once it is older than any commit can take.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.data.tables import UpdateMode

from shared.adapters.index_table_rows import COMMITTED, instance_rk, study_pk
from shared.adapters.index_table_store import (
    SEP,
    Entity,
    Tables,
    delete_op,
    dump_json,
    key,
    load_json,
    replace_op,
)
from shared.core.changefeed import ChangeAction, ChangeFeedEntry, ChangeFeedQuery, ChangeState
from shared.core.errors import Unavailable
from shared.core.model import InstanceUids

if TYPE_CHECKING:
    from shared.adapters.index_table_write import Scope

log = logging.getLogger(__name__)

CHANGES, STUDIES = Tables.CHANGES, Tables.STUDIES
COUNTER_RK, WATERMARK_RK = "N", "W"
ATTEMPTS = 40  # appends serialize on the counter row, as commits in one study do on its row
MAX_ENTRIES = 90  # entries of one append: with the counter, the intent and 3 stability rows <= 100
SWEEP_AFTER = timedelta(seconds=10)  # intents younger than this are left to their own writer
DISCARD_AFTER = timedelta(minutes=15)  # an intent with no outbox row this old never committed
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
END_DIGITS = ":"  # sorts right after "9": closes the range of zero-padded sequences

Change = tuple[str, str, str, str]  # action, series, SOP instance, version


@dataclass(frozen=True, slots=True)
class Intent:
    study: str
    rk: str  # the intent row in the feed partition
    token: str


def feed_pk(partition: str) -> str:
    return f"{partition}{SEP}feed"


def pad(number: int) -> str:
    return f"{number:020d}"


def entry_rk(sequence: int) -> str:
    return f"E{SEP}{pad(sequence)}"


def due_rk(sequence: int, study: str) -> str:
    return f"Q{SEP}{pad(sequence)}{SEP}{key(study)}"


def last_rk(study: str) -> str:
    return f"L{SEP}{key(study)}"


def outbox_rk(token: str) -> str:
    return f"X{SEP}{token}"


def micros(moment: datetime) -> int:
    return (moment.astimezone(UTC) - EPOCH) // timedelta(microseconds=1)


def moment(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _backoff(attempt: int) -> None:
    if attempt:
        time.sleep(random.uniform(0, min(0.004 * 2**attempt, 0.5)))


# --- writing ------------------------------------------------------------------------------------


def intend(s: Scope, study: str) -> Intent:
    """Step 1: the intent row (1 request)."""
    token = f"{time.time_ns():020d}{uuid.uuid4().hex[:12]}"
    rk = f"P{SEP}{pad(micros(datetime.now(UTC)))}{SEP}{token}"
    s.tables.upsert(CHANGES, {"PartitionKey": feed_pk(s.partition), "RowKey": rk, "st": study, "tk": token})
    return Intent(study, rk, token)


def outbox_op(pk: str, intent: Intent, changes: Sequence[Change]) -> tuple[Any, ...]:
    """Step 2: the outbox row, an operation of the study transaction."""
    row: Entity = {"PartitionKey": pk, "RowKey": outbox_rk(intent.token)}
    dump_json(row, "ch", [list(change) for change in changes])
    return replace_op(row, None)


def forget(s: Scope, intent: Intent) -> None:
    """Drop the intent of a change that did not commit (its transaction failed a condition)."""
    s.tables.delete(CHANGES, feed_pk(s.partition), intent.rk)


def publish(s: Scope, intent: Intent, changes: Sequence[Change]) -> None:
    """Step 3: append the committed changes to the feed, then delete the outbox row."""
    if _append(s, intent, changes):
        s.tables.delete(STUDIES, study_pk(s.partition, intent.study), outbox_rk(intent.token))


def _append(s: Scope, intent: Intent, changes: Sequence[Change]) -> bool:
    """One transaction: sequences, entries, stability rows, intent consumed. False if another
    process consumed the intent first (it appended them)."""
    if len(changes) > MAX_ENTRIES:
        raise ValueError("too many changes for one append")
    pk = feed_pk(s.partition)
    for attempt in range(ATTEMPTS):
        _backoff(attempt)
        keys = [COUNTER_RK, last_rk(intent.study)] + ([intent.rk] if attempt else [])
        head, last, *mine = s.tables.map(lambda rk: s.tables.get(CHANGES, pk, rk), keys)
        if mine and mine[0] is None:
            return False
        first = int(head["n"]) + 1 if head else 1
        top = first + len(changes) - 1
        stamp = max(micros(datetime.now(UTC)), int(head["t"]) + 1 if head else 0)
        end = stamp + len(changes) - 1  # one microsecond apart: times grow with sequences
        ops = [
            replace_op(
                {"PartitionKey": pk, "RowKey": COUNTER_RK, "n": pad(top), "t": pad(end)},
                head["etag"] if head else None,
            )
        ]
        for offset, (action, series, sop, version) in enumerate(changes):
            entry = {"a": action, "st": intent.study, "se": series, "sop": sop, "v": version, "p": 0}
            row = {"PartitionKey": pk, "RowKey": entry_rk(first + offset), "t": pad(stamp + offset), **entry}
            ops.append(replace_op(row, None))
        ops.append(delete_op(pk, intent.rk, None))
        new_last = {"PartitionKey": pk, "RowKey": last_rk(intent.study), "st": intent.study, "n": pad(top)}
        ops.append(replace_op({**new_last, "due": 1}, last["etag"] if last else None))
        if last and last.get("due"):
            ops.append(delete_op(pk, due_rk(int(last["n"]), intent.study), None))
        due = {"PartitionKey": pk, "RowKey": due_rk(top, intent.study), "st": intent.study, "t": pad(end)}
        ops.append(replace_op(due, None))
        if s.tables.transact(CHANGES, ops) is not None:
            return True
    raise Unavailable("the change feed is being appended by too many requests; retry later")


def sweep(s: Scope, min_age: timedelta | None = None) -> int:
    """Append what crashed writers left in their outboxes (intents older than `min_age`, by
    default SWEEP_AFTER); drop intents that never committed. Returns how many it appended."""
    pk, now = feed_pk(s.partition), datetime.now(UTC)
    older = f"P{SEP}{pad(micros(now - (SWEEP_AFTER if min_age is None else min_age)))}"
    appended = 0
    for row in list(s.tables.query(CHANGES, pk, f"P{SEP}", older)):
        intent = Intent(row["st"], row["RowKey"], row["tk"])
        outbox = s.tables.get(STUDIES, study_pk(s.partition, intent.study), outbox_rk(intent.token))
        if outbox is not None:
            publish(s, intent, load_changes(outbox))
            appended += 1
            log.warning("the change feed took over changes a writer left behind (it stopped early)")
        elif row["RowKey"] < f"P{SEP}{pad(micros(now - DISCARD_AFTER))}":
            s.tables.delete(CHANGES, pk, row["RowKey"], row["etag"])
    return appended


# --- reading ------------------------------------------------------------------------------------


def _entries(s: Scope, rows: list[Entity]) -> list[ChangeFeedEntry]:
    """Entries with their state, from the live instance rows (point reads, in parallel)."""
    wanted = sorted({(r["st"], r["se"], r["sop"]) for r in rows})

    def live(uids: tuple[str, str, str]) -> str | None:
        row = s.tables.get(STUDIES, study_pk(s.partition, uids[0]), instance_rk(uids[1], uids[2]), ["s", "v"])
        return row["v"] if row is not None and row["s"] == COMMITTED else None

    versions = dict(zip(wanted, s.tables.map(live, wanted), strict=True))
    out = []
    for row in rows:
        current = versions[(row["st"], row["se"], row["sop"])]
        if current is None:
            state = ChangeState.DELETED
        else:
            state = ChangeState.CURRENT if current == row["v"] else ChangeState.REPLACED
        out.append(
            ChangeFeedEntry(
                sequence=int(row["RowKey"][2:]),
                action=ChangeAction(row["a"]),
                timestamp=moment(int(row["t"])),
                partition=s.name,
                uids=InstanceUids(row["st"], row["se"], row["sop"]),
                version=row["v"],
                state=state,
            )
        )
    return out


def _range(s: Scope, after: int, **kw: Any) -> Any:
    return s.tables.query(CHANGES, feed_pk(s.partition), entry_rk(after + 1), f"E{SEP}{END_DIGITS}", **kw)


def read_changes(s: Scope, query: ChangeFeedQuery) -> list[ChangeFeedEntry]:
    at_least = {"t": pad(micros(query.start))} if query.start is not None else None
    end = micros(query.end) if query.end is not None else None
    rows: list[Entity] = []
    for row in _range(s, query.offset, page=min(query.limit, 1000), at_least=at_least):
        if end is not None and int(row["t"]) >= end:
            break  # times grow with sequences: nothing later is in the window
        rows.append(row)
        if len(rows) >= query.limit:
            break
    return _entries(s, rows)


def latest_change(s: Scope) -> ChangeFeedEntry | None:
    pk = feed_pk(s.partition)
    head = s.tables.get(CHANGES, pk, COUNTER_RK)
    row = s.tables.get(CHANGES, pk, entry_rk(int(head["n"]))) if head else None
    return _entries(s, [row])[0] if row else None


def unpublished_changes(s: Scope, limit: int) -> list[ChangeFeedEntry]:
    sweep(s)
    mark = s.tables.get(CHANGES, feed_pk(s.partition), WATERMARK_RK)
    rows: list[Entity] = []
    for row in _range(s, int(mark["n"]) if mark else 0, page=min(limit, 1000), equal={"p": 0}):
        rows.append(row)
        if len(rows) >= limit:
            break
    return _entries(s, rows)


def mark_published(s: Scope, sequences: Sequence[int]) -> None:
    """Flag the entries (one transaction per 100), then move the watermark below which every entry
    is published, so the next search for unpublished entries starts there."""
    pk = feed_pk(s.partition)
    unique = sorted(set(sequences))
    for start in range(0, len(unique), 100):
        ops = [
            ("update", {"PartitionKey": pk, "RowKey": entry_rk(n), "p": 1}, {"mode": UpdateMode.MERGE})
            for n in unique[start : start + 100]
        ]
        if s.tables.transact(CHANGES, ops) is None:
            raise Unavailable("the change feed could not be updated; retry later")
    for _attempt in range(ATTEMPTS):
        head, mark = s.tables.map(lambda rk: s.tables.get(CHANGES, pk, rk), [COUNTER_RK, WATERMARK_RK])
        if head is None:
            return
        low = int(mark["n"]) if mark else 0
        first = next(iter(_range(s, low, page=1, equal={"p": 0}, select=["p"])), None)
        settled = int(first["RowKey"][2:]) - 1 if first else int(head["n"])
        if settled <= low:
            return
        row = {"PartitionKey": pk, "RowKey": WATERMARK_RK, "n": pad(settled)}
        if s.tables.transact(CHANGES, [replace_op(row, mark["etag"] if mark else None)]) is not None:
            return


def load_changes(outbox: Entity) -> list[Change]:
    return [(a, b, c, d) for a, b, c, d in load_json(outbox, "ch", [])]

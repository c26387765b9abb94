"""The change feed on the SQL index: appended inside the store and delete transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, select, update

from shared.adapters.index_sql_schema import ADVISORY_XACT_LOCK, CREATED, changes, instances
from shared.core.changefeed import ChangeAction, ChangeFeedEntry, ChangeFeedQuery, ChangeState
from shared.core.model import InstanceUids

CHANGE_LOCK = 0x44494353  # "DICS": the advisory lock that orders change-feed appends on PostgreSQL
# Built once, like every statement of the store path (index_sql.py says why).
_APPEND = changes.insert()
_MARK_PUBLISHED = (
    update(changes)
    .where(
        changes.c.partition == bindparam("w_partition"),
        changes.c.sequence.in_(bindparam("w_sequences", expanding=True)),
    )
    .values(published=True)
)


def change_row(
    partition: str, action: ChangeAction, uids: InstanceUids, version: str, now: datetime
) -> dict[str, Any]:
    """The values of a new change feed entry (the store path inserts it on its own cursor)."""
    return {
        "partition": partition,
        "action": action.value,
        "study_uid": uids.study,
        "series_uid": uids.series,
        "sop_instance_uid": uids.instance,
        "version": version,
        "timestamp": now,
        "published": False,
    }


def append_change(
    conn: Connection, partition: str, action: ChangeAction, uids: InstanceUids, version: str, now: datetime
) -> None:
    """Append one entry in the caller's transaction, so it commits (or not) with the change itself."""
    if conn.dialect.name == "postgresql":
        # Sequences are handed out at insert time, not at commit: without this lock a reader could
        # page past a lower sequence that commits later and never see it.
        conn.execute(ADVISORY_XACT_LOCK, {"key": CHANGE_LOCK})
    conn.execute(_APPEND, change_row(partition, action, uids, version, now))


_LIVE = instances.alias("live")
# Unpublished entries are read after every STOW and delete: one prebuilt statement, no join (an
# event does not carry the state), served by ix_changes_unpublished.
_UNPUBLISHED = (
    select(changes, changes.c.version.label("live_version"))
    .where(
        changes.c.partition == bindparam("partition"),
        changes.c.published.is_(False),
    )
    .order_by(changes.c.sequence)
    .limit(bindparam("limit"))
)


def _select(partition: str) -> Any:
    live = _LIVE
    return (
        select(changes, live.c.version.label("live_version"))
        .select_from(
            changes.outerjoin(
                live,
                and_(
                    live.c.partition == changes.c.partition,
                    live.c.sop_instance_uid == changes.c.sop_instance_uid,
                    live.c.status == CREATED,
                ),
            )
        )
        .where(changes.c.partition == partition)
    )


def _entry(row: Any) -> ChangeFeedEntry:
    if row.live_version is None:
        state = ChangeState.DELETED
    elif row.live_version == row.version:
        state = ChangeState.CURRENT
    else:
        state = ChangeState.REPLACED
    timestamp = row.timestamp if row.timestamp.tzinfo else row.timestamp.replace(tzinfo=UTC)
    return ChangeFeedEntry(
        sequence=int(row.sequence),
        action=ChangeAction(row.action),
        timestamp=timestamp,
        partition=row.partition,
        uids=InstanceUids(row.study_uid, row.series_uid, row.sop_instance_uid),
        version=row.version,
        state=state,
    )


def read_changes(conn: Connection, partition: str, query: ChangeFeedQuery) -> list[ChangeFeedEntry]:
    stmt = _select(partition).where(changes.c.sequence > query.offset)
    if query.start is not None:
        stmt = stmt.where(changes.c.timestamp >= query.start)
    if query.end is not None:
        stmt = stmt.where(changes.c.timestamp < query.end)
    stmt = stmt.order_by(changes.c.sequence).limit(query.limit)
    return [_entry(row) for row in conn.execute(stmt)]


def latest_change(conn: Connection, partition: str) -> ChangeFeedEntry | None:
    row = conn.execute(_select(partition).order_by(changes.c.sequence.desc()).limit(1)).first()
    return _entry(row) if row is not None else None


def unpublished_changes(conn: Connection, partition: str, limit: int) -> list[ChangeFeedEntry]:
    """Oldest first. Their `state` is not computed (reported as current): events do not carry it."""
    rows = conn.execute(_UNPUBLISHED, {"partition": partition, "limit": limit})
    return [_entry(row) for row in rows]


def mark_published(conn: Connection, partition: str, sequences: Sequence[int]) -> None:
    for start in range(0, len(sequences), 500):
        conn.execute(
            _MARK_PUBLISHED, {"w_partition": partition, "w_sequences": sequences[start : start + 500]}
        )

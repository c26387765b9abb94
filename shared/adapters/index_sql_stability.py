"""The study-stable debounce on the SQL index: which studies have been quiet, and which were announced.

A study is quiet once its last change (in the `changes` feed) is older than a cutoff; it is due for
a stable announcement when `study_stability` has no announcement for it at that last change.

To keep the search cheap on a long change feed, a per-partition watermark (the `study_stability`
row whose study_uid is "") marks a sequence up to which every change is settled: the search groups
only the changes after it (a range of the `changes` primary key). After a search that finds nothing
due, the watermark moves up to just below the first change that is not yet quiet. That is safe
because every study still due then has a change at or after the cutoff, and sequences grow in
commit order (SQLite serialises writers; PostgreSQL appends under an advisory lock), so no change
can later appear at or below the watermark.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from shared.adapters.index_sql_schema import changes, study_stability

_WATERMARK = ""  # never a Study Instance UID


def _upsert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _set_at_least(conn: Connection, partition: str, study: str, sequence: int) -> None:
    """Set the study's announced sequence to `sequence` unless it is already higher."""
    stmt = _upsert(conn)(study_stability).values(
        partition=partition, study_uid=study, announced_sequence=sequence
    )
    current = study_stability.c.announced_sequence
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["partition", "study_uid"],
            set_={
                "announced_sequence": case(
                    (stmt.excluded.announced_sequence > current, stmt.excluded.announced_sequence),
                    else_=current,
                )
            },
        )
    )


def _watermark(conn: Connection, partition: str) -> int:
    value = conn.execute(
        select(study_stability.c.announced_sequence).where(
            study_stability.c.partition == partition, study_stability.c.study_uid == _WATERMARK
        )
    ).scalar()
    return int(value or 0)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def quiet_studies(
    conn: Connection, partition: str, cutoff: datetime, limit: int
) -> list[tuple[str, int, datetime]]:
    """Studies whose last change is before `cutoff` and not announced since, oldest last change first.

    Run it in a write transaction: when nothing is due it moves the watermark."""
    cutoff = cutoff.astimezone(UTC)  # SQLite keeps naive UTC text: compare like with like
    watermark = _watermark(conn, partition)
    top = conn.execute(select(func.max(changes.c.sequence)).where(changes.c.partition == partition)).scalar()
    if top is None or top <= watermark:
        return []
    recent = (
        select(
            changes.c.study_uid,
            func.max(changes.c.sequence).label("last"),
            func.max(changes.c.timestamp).label("at"),
        )
        .where(changes.c.partition == partition, changes.c.sequence > watermark)
        .group_by(changes.c.study_uid)
        .subquery()
    )
    announced = study_stability.c.announced_sequence
    rows = conn.execute(
        select(recent.c.study_uid, recent.c.last, recent.c.at)
        .select_from(
            recent.outerjoin(
                study_stability,
                and_(
                    study_stability.c.partition == partition,
                    study_stability.c.study_uid == recent.c.study_uid,
                ),
            )
        )
        .where(recent.c.at < cutoff, or_(announced.is_(None), announced < recent.c.last))
        .order_by(recent.c.last)
        .limit(limit)
    ).all()
    if rows:
        return [(row.study_uid, int(row.last), _aware(row.at)) for row in rows]
    # Nothing is due: every change up to the first one that is not quiet yet is settled. Only
    # changes visible when this began (<= top) count, so one committed meanwhile is never skipped.
    first_active = conn.execute(
        select(func.min(changes.c.sequence)).where(
            changes.c.partition == partition,
            changes.c.sequence > watermark,
            changes.c.sequence <= top,
            changes.c.timestamp >= cutoff,
        )
    ).scalar()
    settled = int(top) if first_active is None else int(first_active) - 1
    if settled > watermark:
        _set_at_least(conn, partition, _WATERMARK, settled)
    return []


def mark_study_stable(conn: Connection, partition: str, study: str, sequence: int) -> None:
    _set_at_least(conn, partition, study, sequence)

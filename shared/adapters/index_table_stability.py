"""The study-stable debounce of the Table index, kept in the feed partition (`<prefix>Changes`).

Each append moves two rows of its study in the same transaction as its entries: `L|<study>` (the
sequence of the study's last change, and whether it is due) and `Q|<sequence>|<study>` (present
while the study is due: changed and not announced stable since). Entry times grow with sequences,
so the `Q|` rows in key order are the due studies by their last change, oldest first: the search
for quiet studies reads them from the start and stops at the first one that is not quiet yet.
Announcing a study deletes its `Q|` row, unless a later change moved it on.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from shared.adapters.index_table_changes import (
    ATTEMPTS,
    CHANGES,
    due_rk,
    feed_pk,
    last_rk,
    micros,
    moment,
    sweep,
)
from shared.adapters.index_table_store import END, SEP, delete_op, replace_op
from shared.core.errors import Unavailable

if TYPE_CHECKING:
    from shared.adapters.index_table_write import Scope


def quiet_studies(s: Scope, cutoff: datetime, limit: int) -> list[tuple[str, int, datetime]]:
    sweep(s)
    before = micros(cutoff)
    out: list[tuple[str, int, datetime]] = []
    for row in s.tables.query(
        CHANGES, feed_pk(s.partition), f"Q{SEP}", f"Q{SEP}{END}", page=min(limit, 1000)
    ):
        if len(out) >= limit or int(row["t"]) >= before:
            break
        out.append((row["st"], int(row["RowKey"].split(SEP)[1]), moment(int(row["t"]))))
    return out


def mark_study_stable(s: Scope, study: str, sequence: int) -> None:
    pk = feed_pk(s.partition)
    for _attempt in range(ATTEMPTS):
        last = s.tables.get(CHANGES, pk, last_rk(study))
        if last is None or not last.get("due") or int(last["n"]) > sequence:
            return  # nothing due, or a later change is not announced by this
        ops = [
            replace_op({**last, "due": 0}, last["etag"]),
            delete_op(pk, due_rk(int(last["n"]), study), None),
        ]
        if s.tables.transact(CHANGES, ops) is not None:
            return
    raise Unavailable("the change feed is being appended by too many requests; retry later")

"""The batch calls of the index port, one instance at a time: for an index that has no cheaper way.

Each item gets its own answer, so one instance's failure never decides another's; but once the
index is Unavailable, the items left get that answer without calling it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from shared.core.errors import Unavailable
from shared.core.model import InstanceRecord, PendingInstance

if TYPE_CHECKING:
    from shared.core.ports import MetadataIndex


def begin_each(
    index: MetadataIndex, records: Sequence[InstanceRecord], *, replace: bool
) -> list[PendingInstance | Exception]:
    results: list[PendingInstance | Exception] = []
    for record in records:
        try:
            results.append(index.begin_instance(record, replace=replace))
        except Unavailable as exc:
            return results + [exc] * (len(records) - len(results))
        except Exception as exc:
            results.append(exc)
    return results


def commit_each(
    index: MetadataIndex, items: Sequence[tuple[InstanceRecord, PendingInstance]]
) -> list[Exception | None]:
    results: list[Exception | None] = []
    for record, pending in items:
        try:
            index.commit_instance(record, pending)
        except Unavailable as exc:
            return results + [exc] * (len(items) - len(results))
        except Exception as exc:
            results.append(exc)
        else:
            results.append(None)
    return results

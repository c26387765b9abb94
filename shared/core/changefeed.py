"""The change feed: every create, replace and delete, in commit order, as the index records it.

An entry's `state` says what became of that instance version since: still `current`, `replaced` by
a newer version, or `deleted`. The JSON shape follows the Microsoft DICOM server's change feed
(PascalCase keys), so consumers written for it (DICOM Cast) read this one too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.core.errors import BadRequest
from shared.core.model import InstanceUids


class ChangeAction(StrEnum):
    CREATE = "create"
    REPLACE = "replace"
    DELETE = "delete"


class ChangeState(StrEnum):
    CURRENT = "current"
    REPLACED = "replaced"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class ChangeFeedEntry:
    sequence: int
    action: ChangeAction
    timestamp: datetime  # timezone-aware, UTC
    partition: str
    uids: InstanceUids
    version: str
    state: ChangeState

    def to_json(self, metadata: dict[str, Any] | None = None, with_metadata: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Sequence": self.sequence,
            "StudyInstanceUid": self.uids.study,
            "SeriesInstanceUid": self.uids.series,
            "SopInstanceUid": self.uids.instance,
            "Action": self.action.value.capitalize(),
            "Timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            "State": self.state.value.capitalize(),
            "PartitionName": self.partition,
        }
        if with_metadata:
            doc["Metadata"] = metadata
        return doc


@dataclass(frozen=True, slots=True)
class ChangeFeedQuery:
    """GET /changefeed: entries after `offset` (a sequence number), at most `limit`, in a time window."""

    offset: int = 0
    limit: int = 10
    start: datetime | None = None
    end: datetime | None = None
    include_metadata: bool = True


MAX_CHANGEFEED_LIMIT = 200


def _time(name: str, value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z") from None
    if parsed.tzinfo is None:
        raise BadRequest(f"{name} must carry a time zone (Z or +hh:mm)")
    return parsed


def _integer(name: str, value: str | None, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return number


def parse_changefeed_query(params: dict[str, str]) -> ChangeFeedQuery:
    known = {"offset", "limit", "includemetadata", "starttime", "endtime"}
    lowered = {k.lower(): v for k, v in params.items()}
    unknown = sorted(k for k in params if k.lower() not in known)
    if unknown:
        raise BadRequest(f"unknown change feed parameter: {unknown[0]}")
    include = lowered.get("includemetadata", "true").lower()
    if include not in ("true", "false"):
        raise BadRequest("includeMetadata must be true or false")
    start = _time("startTime", lowered.get("starttime"))
    end = _time("endTime", lowered.get("endtime"))
    if start and end and start >= end:
        raise BadRequest("startTime must be before endTime")
    return ChangeFeedQuery(
        offset=_integer("offset", lowered.get("offset"), 0, 0, 2**62),
        limit=_integer("limit", lowered.get("limit"), 10, 1, MAX_CHANGEFEED_LIMIT),
        start=start,
        end=end,
        include_metadata=include == "true",
    )

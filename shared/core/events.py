"""Events published after each committed change (and once a study has been quiet for a while).

The schema is documented in the README. `id` is stable for a change, so a republished event is a
duplicate that Service Bus duplicate detection (message id) and consumers can drop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.core.changefeed import ChangeAction, ChangeFeedEntry

INSTANCE_CREATED = "dicom.instance.created"
INSTANCE_REPLACED = "dicom.instance.replaced"
INSTANCE_DELETED = "dicom.instance.deleted"
STUDY_STABLE = "dicom.study.stable"

_TYPES = {
    ChangeAction.CREATE: INSTANCE_CREATED,
    ChangeAction.REPLACE: INSTANCE_REPLACED,
    ChangeAction.DELETE: INSTANCE_DELETED,
}


@dataclass(frozen=True, slots=True)
class DicomEvent:
    id: str
    type: str
    sequence: int  # the change feed sequence (for study.stable: the study's last change)
    partition: str
    study: str
    series: str | None
    instance: str | None
    time: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "sequence": self.sequence,
            "partition": self.partition,
            "studyInstanceUid": self.study,
            "seriesInstanceUid": self.series,
            "sopInstanceUid": self.instance,
            "time": self.time.isoformat().replace("+00:00", "Z"),
        }

    def body(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DicomEvent:
        return cls(
            id=str(doc["id"]),
            type=str(doc["type"]),
            sequence=int(doc["sequence"]),
            partition=str(doc["partition"]),
            study=str(doc["studyInstanceUid"]),
            series=doc.get("seriesInstanceUid"),
            instance=doc.get("sopInstanceUid"),
            time=datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00")),
        )


def event_for(entry: ChangeFeedEntry) -> DicomEvent:
    """The event of one change feed entry; its id is the partition and the sequence."""
    return DicomEvent(
        id=f"{entry.partition}:{entry.sequence}",
        type=_TYPES[entry.action],
        sequence=entry.sequence,
        partition=entry.partition,
        study=entry.uids.study,
        series=entry.uids.series,
        instance=entry.uids.instance,
        time=entry.timestamp,
    )


def study_stable_event(partition: str, study: str, sequence: int, time: datetime) -> DicomEvent:
    """One per quiet period after a study's last change (`sequence`): a later change makes a new one."""
    return DicomEvent(
        id=f"{partition}:stable:{study}:{sequence}",
        type=STUDY_STABLE,
        sequence=sequence,
        partition=partition,
        study=study,
        series=None,
        instance=None,
        time=time,
    )

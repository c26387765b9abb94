"""Value objects shared by the use cases and the ports."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

DicomJson = dict[str, Any]


@dataclass(frozen=True, slots=True)
class InstanceUids:
    study: str
    series: str
    instance: str


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """Everything the index keeps about one instance, built once from its parsed header."""

    uids: InstanceUids
    sop_class_uid: str
    transfer_syntax: str
    version: str
    size: int
    number_of_frames: int
    # DICOM JSON of the small top-level attributes of each level (no bulk data).
    study_attrs: DicomJson = field(default_factory=dict)
    series_attrs: DicomJson = field(default_factory=dict)
    instance_attrs: DicomJson = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """A committed instance as the index returns it for retrieval."""

    uids: InstanceUids
    sop_class_uid: str
    transfer_syntax: str
    version: str
    size: int
    number_of_frames: int


@dataclass(frozen=True, slots=True)
class PendingInstance:
    """A pending index entry: the files of `version` may be written, then committed or aborted."""

    uids: InstanceUids
    version: str
    replaces: str | None  # the committed version a replacement will supersede


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One QIDO-RS result: the UIDs that locate it and its attributes as DICOM JSON."""

    study: str
    series: str | None
    instance: str | None
    attrs: DicomJson


class StoreStatus(StrEnum):
    STORED = "stored"
    WARNING = "warning"
    FAILED = "failed"


class FailureReason(IntEnum):
    """Failure and warning codes of PS3.18 / PS3.4 used in the STOW-RS response."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    # warnings
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The result of storing one part of a STOW-RS request (data, not an exception)."""

    status: StoreStatus
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    reason: FailureReason | None = None
    message: str = ""  # client-safe: never patient data

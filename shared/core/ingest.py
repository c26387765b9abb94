"""Blob drop: a file written to the inbox container is stored by the same pipeline as STOW-RS.

`ingest` runs once per blob-created event, and events arrive at least once, so every step may
run again and must leave the same end state:

- the inbox blob is gone: it was handled before, nothing to do;
- the same bytes are already stored under the file's UIDs: a redelivery after the store but
  before the inbox delete, so the inbox blob is only deleted;
- stored: the inbox blob is deleted;
- refused by the pipeline (not DICOM, invalid, a duplicate with other bytes, too large): the
  file is written under the same name to the failure container beside `<name>.report.json`
  (when, why, the SOP Class and Instance UIDs when known; no patient data), then the inbox
  blob is deleted. Retrying would never help, so the call returns normally;
- a backing service is unavailable: `Unavailable` is raised and nothing is moved, so the
  trigger delivers the event again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import BinaryIO, cast

import pydicom

from shared.core.errors import BadRequest, NotFound, Unavailable
from shared.core.model import FailureReason, InstanceUids, StoredInstance, StoreOutcome, StoreStatus
from shared.core.ports import BlobStore
from shared.core.service import DicomwebService
from shared.core.uids import is_valid_uid

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
REPORT_SUFFIX = ".report.json"

REASON_TEXT: dict[FailureReason, str] = {
    FailureReason.PROCESSING_FAILURE: "Processing failure",
    FailureReason.DUPLICATE_SOP_INSTANCE: "Duplicate SOP Instance",
    FailureReason.SOP_CLASS_NOT_SUPPORTED: "SOP Class not supported",
    FailureReason.OUT_OF_RESOURCES: "Refused: Out of Resources",
    FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set does not match SOP Class",
    FailureReason.CANNOT_UNDERSTAND: "Error: Cannot understand",
    FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED: "Transfer Syntax not supported",
}
"""The meaning of each failure code as PS3.4 (C.4.2 and Annex GG) names it."""


class IngestStatus(StrEnum):
    STORED = "stored"  # stored now; the inbox blob is deleted
    ALREADY_STORED = "already-stored"  # the same bytes were stored before; the inbox blob is deleted
    FAILED = "failed"  # moved to the failure container beside its report
    GONE = "gone"  # the inbox blob no longer exists: an earlier delivery handled it
    IGNORED = "ignored"  # a name the blob store refuses (cannot be read, moved or deleted)


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    max_instance_bytes: int = 2 * 1024**3  # the same limit as one STOW-RS instance
    spool_memory_bytes: int = 8 * 1024**2  # held in memory up to this size, then on disk


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    name: str
    status: IngestStatus
    store: StoreOutcome | None = None  # what the pipeline answered (UIDs, failure reason)
    failure_key: str | None = None  # the file's key in the failure container
    report_key: str | None = None  # its report's key there

    @property
    def stored(self) -> bool:
        return self.status in (IngestStatus.STORED, IngestStatus.ALREADY_STORED)


def report_key(name: str) -> str:
    """The failure report's key beside a failed file's key."""
    return name + REPORT_SUFFIX


def ingest(
    name: str,
    stream: BinaryIO | None,
    *,
    inbox: BlobStore,
    failed: BlobStore,
    service: DicomwebService,
    policy: IngestPolicy | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> IngestOutcome:
    """Store the inbox blob `name` (its bytes are `stream`, or read from the inbox when None).

    Raises `Unavailable` (or another error of a backing service) when the trigger should retry;
    every other result is an `IngestOutcome`."""
    policy = policy or IngestPolicy()
    try:
        inbox.read_range(name, 0, 0)  # exists? (cheap on every adapter)
    except NotFound:
        log.info("ingest: the inbox blob is gone (handled by an earlier delivery)")
        return IngestOutcome(name, IngestStatus.GONE)
    except BadRequest:
        log.warning("ingest: the blob store refuses the inbox blob's name; it is left alone")
        return IngestOutcome(name, IngestStatus.IGNORED)
    source = stream if stream is not None else inbox.open(name)
    with tempfile.SpooledTemporaryFile(max_size=policy.spool_memory_bytes) as raw:
        spool = cast(BinaryIO, raw)
        try:
            size, digest = _spool(source, spool, policy.max_instance_bytes)
        finally:
            if stream is None:
                source.close()
        return _ingest_spooled(name, spool, size, digest, inbox, failed, service, policy, now)


def _ingest_spooled(
    name: str,
    spool: BinaryIO,
    size: int | None,
    digest: str,
    inbox: BlobStore,
    failed: BlobStore,
    service: DicomwebService,
    policy: IngestPolicy,
    now: Callable[[], datetime],
) -> IngestOutcome:
    if size is None:
        refused = StoreOutcome(
            StoreStatus.FAILED,
            reason=FailureReason.OUT_OF_RESOURCES,
            message=f"the file is larger than the limit of {policy.max_instance_bytes} bytes",
        )
        return _move_aside(name, None, refused, inbox, failed, now)
    if size == 0:
        empty = StoreOutcome(
            StoreStatus.FAILED, reason=FailureReason.CANNOT_UNDERSTAND, message="the file is empty"
        )
        return _move_aside(name, spool, empty, inbox, failed, now)
    uids = _peek_uids(spool)
    if uids is not None and (same := _stored_identical(service, uids, size, digest)) is not None:
        return _already_stored(name, same, inbox)
    spool.seek(0)
    outcome = service.store.store_instance(spool, size)
    if outcome.status is not StoreStatus.FAILED:
        inbox.delete(name)
        log.info("ingest: stored an instance of %s bytes", size)
        return IngestOutcome(name, IngestStatus.STORED, outcome)
    if outcome.reason is FailureReason.PROCESSING_FAILURE:
        # the pipeline's answer when a blob write or the index commit failed: worth a retry
        raise Unavailable(outcome.message or "the instance could not be stored; retry later")
    if outcome.reason is FailureReason.DUPLICATE_SOP_INSTANCE and uids is not None:
        # a concurrent delivery of the same file may have won the race
        same = _stored_identical(service, uids, size, digest)
        if same is not None:
            return _already_stored(name, same, inbox)
    return _move_aside(name, spool, outcome, inbox, failed, now)


def _spool(source: BinaryIO, spool: BinaryIO, limit: int) -> tuple[int | None, str]:
    """Copy `source` into `spool`; its size (None past `limit`) and SHA-256."""
    hasher = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if size > limit:
            return None, ""
        hasher.update(chunk)
        spool.write(chunk)
    return size, hasher.hexdigest()


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _peek_uids(spool: BinaryIO) -> InstanceUids | None:
    """The file's Study/Series/SOP Instance UIDs, or None when they cannot be read or are invalid."""
    spool.seek(0)
    try:
        ds = pydicom.dcmread(
            spool,
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
        )
        values = [_text(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    except Exception:  # pydicom raises many types for damaged data; the pipeline reports them
        return None
    if not all(is_valid_uid(value) for value in values):
        return None
    return InstanceUids(*values)


def _stored_identical(
    service: DicomwebService, uids: InstanceUids, size: int, digest: str
) -> StoredInstance | None:
    """The stored instance with these UIDs if its bytes are the same as the file's."""
    for stored in service.index.find_instances(uids.study, uids.series, uids.instance):
        if stored.size != size:
            continue
        hasher = hashlib.sha256()
        try:
            with service.open_instance(stored) as fp:
                while chunk := fp.read(CHUNK):
                    hasher.update(chunk)
        except NotFound:  # replaced or deleted meanwhile
            continue
        if hasher.hexdigest() == digest:
            return stored
    return None


def _already_stored(name: str, stored: StoredInstance, inbox: BlobStore) -> IngestOutcome:
    inbox.delete(name)
    log.info("ingest: the same file is already stored (a redelivery); the inbox blob is removed")
    outcome = StoreOutcome(
        StoreStatus.STORED,
        sop_class_uid=stored.sop_class_uid,
        sop_instance_uid=stored.uids.instance,
        study_uid=stored.uids.study,
        series_uid=stored.uids.series,
    )
    return IngestOutcome(name, IngestStatus.ALREADY_STORED, outcome)


def failure_report(outcome: StoreOutcome, when: datetime) -> dict[str, object]:
    """The JSON report beside a failed file: why it failed, never patient data."""
    reason = outcome.reason or FailureReason.PROCESSING_FAILURE
    return {
        "failedAt": when.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "failureReason": int(reason),
        "failureReasonHex": f"{int(reason):04X}",
        "failureReasonText": REASON_TEXT.get(reason, reason.name),
        "message": outcome.message,
        "sopClassUid": outcome.sop_class_uid,
        "sopInstanceUid": outcome.sop_instance_uid,
    }


def _move_aside(
    name: str,
    spool: BinaryIO | None,
    outcome: StoreOutcome,
    inbox: BlobStore,
    failed: BlobStore,
    now: Callable[[], datetime],
) -> IngestOutcome:
    """The file and its report into the failure container (replacing an earlier try's), then the
    inbox blob deleted. `spool` None: copy the file from the inbox."""
    if spool is not None:
        spool.seek(0)
        failed.put(name, spool, overwrite=True)
    else:
        with inbox.open(name) as fp:
            failed.put(name, fp, overwrite=True)
    report = json.dumps(failure_report(outcome, now()), indent=2).encode("utf-8")
    failed.put(report_key(name), io.BytesIO(report), overwrite=True)
    inbox.delete(name)
    code = int(outcome.reason) if outcome.reason is not None else 0
    log.warning(
        "ingest: a file could not be stored (failure reason %04X); moved to the failure container", code
    )
    return IngestOutcome(name, IngestStatus.FAILED, outcome, failure_key=name, report_key=report_key(name))

"""STOW-RS: store one spooled instance, two-phase, and build the PS3.18 store response.

pending index row -> instance + metadata + frame index blobs (create-only) -> commit -> delete the
superseded version. Any failure after the pending row undoes what was written, so nothing
half-stored is ever visible and a retry succeeds.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID

from shared.core.dicomjson import dataset_to_json, dumps, pixel_data_json
from shared.core.errors import Conflict, Unavailable
from shared.core.frames import FrameIndex, PixelDataError, index_frames
from shared.core.header import read_header
from shared.core.layout import instance_blobs, new_version
from shared.core.levels import split_levels
from shared.core.model import (
    FailureReason,
    InstanceRecord,
    InstanceUids,
    PendingInstance,
    StoreOutcome,
    StoreStatus,
)
from shared.core.ports import BlobStore, MetadataIndex
from shared.core.uids import is_valid_uid

log = logging.getLogger(__name__)

_SOP_CLASS = BaseTag(0x00080016)
_SOP_INSTANCE = BaseTag(0x00080018)
_REQUIRED_UIDS = (
    (BaseTag(0x0020000D), "StudyInstanceUID", "Study Instance UID (0020,000D)"),
    (BaseTag(0x0020000E), "SeriesInstanceUID", "Series Instance UID (0020,000E)"),
    (_SOP_INSTANCE, "SOPInstanceUID", "SOP Instance UID (0008,0018)"),
    (_SOP_CLASS, "SOPClassUID", "SOP Class UID (0008,0016)"),
)
_TRANSFER_SYNTAX = BaseTag(0x00020010)
_MEDIA_SOP_INSTANCE = BaseTag(0x00020003)
_UI_VRS = frozenset({"UI", None})  # None: implicit VR, where these tags are UI


@dataclass(frozen=True, slots=True)
class StorePolicy:
    partition: str = "default"
    overwrite_existing: bool = False
    bulk_data_threshold: int = 1024


class _Rejected(Exception):
    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _read_header(fp: BinaryIO) -> tuple[Dataset, int]:
    fp.seek(0)
    try:
        # At the Pixel Data element (or the end): where frame indexing resumes.
        ds, position = read_header(fp)
    except InvalidDicomError:
        raise _Rejected(
            FailureReason.CANNOT_UNDERSTAND,
            "not a DICOM Part 10 file (128-byte preamble, 'DICM' and file meta information required)",
        ) from None
    except Exception as exc:  # pydicom raises many types for damaged data
        log.debug("header parse failed: %s", type(exc).__name__)
        raise _Rejected(FailureReason.CANNOT_UNDERSTAND, "the DICOM header could not be parsed") from None
    return ds, position


def _uid_text(ds: Dataset, tag: BaseTag, keyword: str) -> str:
    """`_text(ds.get(keyword))` for a UID attribute; straight from the bytes read where pydicom's
    conversion of them is certain (a single UI value: latin-1, trailing NULs and spaces dropped),
    which spares a conversion through `Dataset.__getattr__` for each of the six UIDs checked."""
    raw = ds._dict.get(tag)
    if type(raw) is RawDataElement and raw.VR in _UI_VRS and type(raw.value) is bytes:
        text = raw.value.decode("latin-1").rstrip("\0 ")
        if "\\" not in text:
            return text.strip()
    return _text(ds.get(keyword))


def _validate(ds: Dataset, expected_study: str | None) -> tuple[InstanceUids, str, str]:
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = _uid_text(meta, _TRANSFER_SYNTAX, "TransferSyntaxUID") if meta is not None else ""
    if not transfer_syntax:
        raise _Rejected(
            FailureReason.CANNOT_UNDERSTAND, "file meta information lacks Transfer Syntax UID (0002,0010)"
        )
    if not is_valid_uid(transfer_syntax):
        raise _Rejected(FailureReason.CANNOT_UNDERSTAND, "Transfer Syntax UID (0002,0010) is not a valid UID")
    values: dict[str, str] = {}
    for tag, keyword, label in _REQUIRED_UIDS:
        try:
            value = _uid_text(ds, tag, keyword)
        except Exception:
            value = ""
        if not value:
            raise _Rejected(FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{label} is missing")
        if not is_valid_uid(value):
            raise _Rejected(FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{label} is not a valid UID")
        values[keyword] = value
    media_sop = _uid_text(meta, _MEDIA_SOP_INSTANCE, "MediaStorageSOPInstanceUID") if meta is not None else ""
    if media_sop and media_sop != values["SOPInstanceUID"]:
        raise _Rejected(
            FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Instance UID (0008,0018) differs from Media Storage SOP Instance UID (0002,0003)",
        )
    if expected_study is not None and values["StudyInstanceUID"] != expected_study:
        raise _Rejected(
            FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "Study Instance UID (0020,000D) differs from the study of the request URL",
        )
    uids = InstanceUids(values["StudyInstanceUID"], values["SeriesInstanceUID"], values["SOPInstanceUID"])
    return uids, values["SOPClassUID"], transfer_syntax


def _metadata(ds: Dataset, frames: FrameIndex, threshold: int) -> dict[str, object]:
    doc = dataset_to_json(ds, threshold)
    if frames.number_of_frames > 0:
        bits = ds.get("BitsAllocated", 16)
        encapsulated = UID(frames.transfer_syntax).is_encapsulated
        doc["7FE00010"] = pixel_data_json(
            "OB" if encapsulated or (isinstance(bits, int) and bits <= 8) else "OW"
        )
    return doc


# No value of a string VR with a length limit may exceed 10240 characters (LT, PS3.5 6.2); an
# indexed attribute longer than that is refused rather than copied into every search result.
_MAX_INDEXED_VALUE = 10240


def _value_length(value: object) -> int:
    if isinstance(value, dict):  # PN: {"Alphabetic": ..., "Ideographic": ..., "Phonetic": ...}
        return sum(len(v) for v in value.values() if isinstance(v, str))
    return len(value) if isinstance(value, str) else 0


def _may_hold_long_values(ds: Dataset) -> bool:
    """False when no top-level value of `ds` can decode to more than `_MAX_INDEXED_VALUE`
    characters: every element is still raw and at most that many bytes long (a character takes
    at least a byte), or converted and no longer than that as text, or of a VR whose DICOM JSON values
    `_value_length` counts as 0 (sequences, numbers: frame indexing converted some). The
    usual header passes here, without a look at each value of its DICOM JSON."""
    for elem in ds._dict.values():
        if type(elem) is RawDataElement:
            if elem.length > _MAX_INDEXED_VALUE:
                return True
        elif elem.VR not in _NOT_TEXT_VRS and len(str(elem.value)) > _MAX_INDEXED_VALUE:
            return True  # converted (Specific Character Set always is): its text bounds its values
    return False


_NOT_TEXT_VRS = frozenset({"SQ", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "IS", "DS", "AT"})


def _check_indexed_lengths(levels: tuple[dict[str, Any], ...]) -> None:
    for attrs in levels:
        for tag, elem in attrs.items():
            values = elem.get("Value")
            if values and max(map(_value_length, values)) > _MAX_INDEXED_VALUE:
                raise _Rejected(
                    FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    f"attribute ({tag[:4]},{tag[4:]}) is longer than {_MAX_INDEXED_VALUE} characters",
                )


@dataclass(slots=True)
class _Prepared:
    """An instance that passed validation: what its store writes."""

    fp: BinaryIO
    record: InstanceRecord
    doc: dict[str, object]
    frames: FrameIndex
    outcome: StoreOutcome

    def failed(self, reason: FailureReason, message: str) -> StoreOutcome:
        o = self.outcome
        return StoreOutcome(
            StoreStatus.FAILED,
            sop_class_uid=o.sop_class_uid,
            sop_instance_uid=o.sop_instance_uid,
            study_uid=o.study_uid,
            series_uid=o.series_uid,
            reason=reason,
            message=message,
        )


@dataclass(slots=True)
class _Begun:
    prepared: _Prepared
    pending: PendingInstance
    written: list[str]


_RETRY_LATER = "the instance could not be stored; retry later"


class InstanceStore:
    """The store pipeline shared by STOW-RS and blob-drop ingestion."""

    def __init__(self, blobs: BlobStore, index: MetadataIndex, policy: StorePolicy) -> None:
        self._blobs = blobs
        self._index = index
        self._policy = policy

    def store_instance(self, fp: BinaryIO, size: int, *, expected_study: str | None = None) -> StoreOutcome:
        """Store one spooled instance (a seekable file holding exactly its bytes)."""
        return self.store_instances([(fp, size)], expected_study=expected_study)[0]

    def store_instances(
        self, parts: Sequence[tuple[BinaryIO, int]], *, expected_study: str | None = None
    ) -> list[StoreOutcome]:
        """Store spooled instances, one outcome each, in order.

        Each instance is stored or failed on its own, as `store_instance` would; the index work
        of the batch is done together (one transaction to begin them all, one to commit them all,
        where the index can). An instance whose SOP Instance UID repeats one earlier in the batch
        starts a new batch, so the earlier one is stored first, as it would be one by one."""
        outcomes: list[StoreOutcome | None] = [None] * len(parts)
        batch: list[tuple[int, _Prepared]] = []
        seen: set[str] = set()
        for position, (fp, size) in enumerate(parts):
            prepared = self._prepare(fp, size, expected_study)
            if isinstance(prepared, StoreOutcome):
                outcomes[position] = prepared
                continue
            if prepared.record.uids.instance in seen:
                self._write(batch, outcomes)
                batch, seen = [], set()
            batch.append((position, prepared))
            seen.add(prepared.record.uids.instance)
        self._write(batch, outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    def _prepare(self, fp: BinaryIO, size: int, expected_study: str | None) -> _Prepared | StoreOutcome:
        """Parse and validate one instance: what its store writes, or the outcome that refuses it."""
        try:
            ds, position = _read_header(fp)
            sop_class = _uid_text(ds, _SOP_CLASS, "SOPClassUID") or None
            sop_instance = _uid_text(ds, _SOP_INSTANCE, "SOPInstanceUID") or None
        except _Rejected as rejected:
            return StoreOutcome(StoreStatus.FAILED, reason=rejected.reason, message=rejected.message)
        except Exception:
            return StoreOutcome(
                StoreStatus.FAILED,
                reason=FailureReason.CANNOT_UNDERSTAND,
                message="the DICOM header could not be read",
            )
        try:
            uids, sop_class_uid, transfer_syntax = _validate(ds, expected_study)
            try:
                frames = index_frames(fp, (ds, position))
            except PixelDataError as exc:
                raise _Rejected(FailureReason.CANNOT_UNDERSTAND, str(exc)) from None
            try:
                doc = _metadata(ds, frames, self._policy.bulk_data_threshold)
            except Exception as exc:  # pydicom raises many types for a malformed value
                log.debug("DICOM JSON conversion failed: %s", type(exc).__name__)
                raise _Rejected(
                    FailureReason.CANNOT_UNDERSTAND, "an attribute value is malformed and cannot be read"
                ) from None
            levels = split_levels(doc)
            if _may_hold_long_values(ds):
                _check_indexed_lengths(levels)
        except _Rejected as rejected:
            return StoreOutcome(
                StoreStatus.FAILED,
                sop_class_uid=sop_class if sop_class and is_valid_uid(sop_class) else None,
                sop_instance_uid=sop_instance if sop_instance and is_valid_uid(sop_instance) else None,
                reason=rejected.reason,
                message=rejected.message,
            )
        study_attrs, series_attrs, instance_attrs = levels
        record = InstanceRecord(
            uids=uids,
            sop_class_uid=sop_class_uid,
            transfer_syntax=transfer_syntax,
            version=new_version(),
            size=size,
            number_of_frames=frames.number_of_frames,
            study_attrs=study_attrs,
            series_attrs=series_attrs,
            instance_attrs=instance_attrs,
        )
        outcome = StoreOutcome(
            StoreStatus.STORED,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=uids.instance,
            study_uid=uids.study,
            series_uid=uids.series,
        )
        return _Prepared(fp, record, doc, frames, outcome)

    def _write(self, batch: list[tuple[int, _Prepared]], outcomes: list[StoreOutcome | None]) -> None:
        """pending index entries -> files -> commit, for a batch of distinct instances."""
        if not batch:
            return
        begun = self._index.begin_instances(
            [prepared.record for _, prepared in batch], replace=self._policy.overwrite_existing
        )
        down = next((result for result in begun if isinstance(result, Unavailable)), None)
        if down is not None:
            # The index is down: nothing of this batch is stored, and the request is answered 503
            # (a retry later succeeds) rather than each instance being failed one by one.
            for (_, prepared), result in zip(batch, begun, strict=True):
                if isinstance(result, PendingInstance):
                    self._undo(_Begun(prepared, result, []))
            raise down
        written: list[tuple[int, _Begun]] = []
        for (position, prepared), pending in zip(batch, begun, strict=True):
            if isinstance(pending, Exception):
                outcomes[position] = self._refused(prepared, pending)
                continue
            entry = _Begun(prepared, pending, [])
            try:
                self._write_files(entry)
            except Exception as exc:
                self._undo(entry)
                outcomes[position] = self._refused(prepared, exc)
                continue
            written.append((position, entry))
        if not written:
            return
        committed = self._index.commit_instances([(e.prepared.record, e.pending) for _, e in written])
        for (position, entry), error in zip(written, committed, strict=True):
            if isinstance(error, Unavailable):
                error = self._commit_outcome(entry)
            if error is not None:
                self._undo(entry)
                outcomes[position] = self._refused(entry.prepared, error)
                continue
            outcomes[position] = entry.prepared.outcome
            if entry.pending.replaces is not None:
                self._delete_version(entry.prepared.record.uids, entry.pending.replaces)

    def _commit_outcome(self, entry: _Begun) -> Exception | None:
        """After a commit that failed as Unavailable (the connection lost, perhaps during COMMIT):
        None if the instance is committed after all, else an exception that lets it be undone.
        When the index cannot even be read, the outcome is unknown: the files are kept (a committed
        instance must not lose them; a pending one is taken over by a retry) and it fails."""
        uids = entry.prepared.record.uids
        try:
            found = self._index.find_instances(uids.study, uids.series, uids.instance)
        except Exception:
            entry.written.clear()  # nothing is undone: not the files, and the index is unreachable
            return Unavailable("the index is unavailable; the outcome of the store is unknown")
        if any(stored.version == entry.pending.version for stored in found):
            return None
        return Unavailable("the index is unavailable; retry later")

    def _write_files(self, entry: _Begun) -> None:
        prepared = entry.prepared
        blobs = instance_blobs(self._policy.partition, prepared.record.uids, prepared.record.version)
        frames = json.dumps(prepared.frames.to_json(), separators=(",", ":")).encode()
        prepared.fp.seek(0)
        self._blobs.put(blobs.instance, prepared.fp)
        entry.written.append(blobs.instance)
        for key, data in blobs.contents(frames, dumps(prepared.doc)):
            self._blobs.put(key, io.BytesIO(data))
            entry.written.append(key)

    @staticmethod
    def _refused(prepared: _Prepared, error: Exception) -> StoreOutcome:
        if isinstance(error, Conflict):
            return prepared.failed(FailureReason.DUPLICATE_SOP_INSTANCE, error.message)
        log.error("storing an instance failed: %s", type(error).__name__)
        log.debug("store failure", exc_info=error)
        return prepared.failed(FailureReason.PROCESSING_FAILURE, _RETRY_LATER)

    def _undo(self, entry: _Begun) -> None:
        for key in entry.written:
            try:
                self._blobs.delete(key)
            except Exception:
                log.warning("could not remove a blob while undoing a failed store; a sweep will find it")
        try:
            self._index.abort_instance(entry.pending)
        except Exception:
            log.warning("could not remove a pending index entry while undoing a failed store")

    def _delete_version(self, uids: InstanceUids, version: str) -> None:
        for key in instance_blobs(self._policy.partition, uids, version).all():
            try:
                self._blobs.delete(key)
            except Exception:
                log.warning("could not remove a superseded blob; a sweep will find it")

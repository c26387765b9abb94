"""The DICOMweb use cases, named after the PS3.18 transactions, over the ports.

Framework-free: results are plain values and byte iterators; the HTTP shells in `shared/web` turn
them into responses. Byte iterators are synchronous and meant to be consumed in a worker thread.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.datadict import tag_for_keyword

from shared.core import transfer_syntax as tsx
from shared.core.attributes import Level
from shared.core.changefeed import ChangeFeedEntry, ChangeFeedQuery, ChangeState
from shared.core.dicomjson import PIXEL_DATA, absolutize, parse_bulk_path, tag_key
from shared.core.errors import NotFound
from shared.core.frames import FrameIndex, decode_frame, read_frame
from shared.core.layout import InstanceBlobs, instance_blobs, sidecar_frames, sidecar_metadata
from shared.core.levels import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS
from shared.core.model import DicomJson, SearchHit, StoredInstance
from shared.core.ports import BlobStore, MetadataIndex
from shared.core.query import Query
from shared.core.store import InstanceStore
from shared.core.transcode import transcode_to_explicit_le

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"
# What a search result carries without reading metadata: indexed and computed attributes.
_SERVED = (
    STUDY_TAGS
    | SERIES_TAGS
    | INSTANCE_TAGS
    | {
        "00201206",
        "00201208",
        "00201209",
        "00080061",
        RETRIEVE_URL,
        INSTANCE_AVAILABILITY,
    }
)


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    transfer_syntax: str  # the syntax the bytes are in


def _keyword_tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown keyword {keyword}")
    return tag_key(int(tag))


class DicomwebService:
    def __init__(self, blobs: BlobStore, index: MetadataIndex, store: InstanceStore, partition: str) -> None:
        self.blobs = blobs
        self.index = index
        self.store = store
        self._partition = partition

    # --- lookup ------------------------------------------------------------------------------
    def blobs_of(self, stored: StoredInstance) -> InstanceBlobs:
        return instance_blobs(self._partition, stored.uids, stored.version)

    def find(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        found = self.index.find_instances(study, series, instance)
        if not found:
            what = "instance" if instance else "series" if series else "study"
            raise NotFound(f"the {what} was not found")
        return found

    # --- WADO-RS: instances ------------------------------------------------------------------
    @staticmethod
    def as_stored(stored: StoredInstance, transfer_syntax: str) -> bool:
        """Whether `instance_bytes` gives the stored bytes (`stored.size` of them) for this syntax."""
        return transfer_syntax in ("*", stored.transfer_syntax)

    def instance_bytes(self, stored: StoredInstance, transfer_syntax: str) -> Iterator[bytes]:
        """The instance as stored, or transcoded to `transfer_syntax` (explicit VR little endian)."""
        key = self.blobs_of(stored).instance
        if self.as_stored(stored, transfer_syntax):
            with self.blobs.open(key) as fp:
                while chunk := fp.read(CHUNK):
                    yield chunk
            return
        with self.blobs.open(key) as src, tempfile.SpooledTemporaryFile(8 * 1024 * 1024) as dst:
            transcode_to_explicit_le(src, dst)  # type: ignore[arg-type]
            dst.seek(0)
            while chunk := dst.read(CHUNK):
                yield chunk

    # --- WADO-RS: frames ---------------------------------------------------------------------
    def frame_index(self, stored: StoredInstance) -> FrameIndex:
        blobs = self.blobs_of(stored)
        with self.blobs.open(blobs.frames) as fp:
            line = sidecar_frames(fp) if blobs.combined else fp.read()
        return FrameIndex.from_json(json.loads(line))

    def check_frames(self, stored: StoredInstance, numbers: Sequence[int]) -> FrameIndex:
        """The instance's frame index, once every asked frame is known to exist (NotFound otherwise)."""
        index = self.frame_index(stored)
        if index.number_of_frames == 0:
            raise NotFound("the instance has no pixel data")
        for number in numbers:
            if number > index.number_of_frames:
                raise NotFound(f"frame {number} is past the last frame ({index.number_of_frames})")
        return index

    def iter_frames(
        self, stored: StoredInstance, index: FrameIndex, numbers: Sequence[int], transfer_syntax: str
    ) -> Iterator[Frame]:
        """Frames in the order asked: stored bytes when possible, else decoded native little endian."""
        key = self.blobs_of(stored).instance
        as_stored = transfer_syntax == "*" or transfer_syntax == stored.transfer_syntax
        native = not tsx.is_encapsulated(stored.transfer_syntax)
        for number in numbers:
            if index.direct and (as_stored or native):
                data = read_frame(lambda o, n: self.blobs.read_range(key, o, n), index, number)
                yield Frame(data, tsx.EXPLICIT_VR_LITTLE_ENDIAN if native else stored.transfer_syntax)
            else:
                with self.blobs.open(key) as fp:
                    yield Frame(decode_frame(fp, number), tsx.EXPLICIT_VR_LITTLE_ENDIAN)

    def frame_syntaxes(self, stored: StoredInstance) -> tuple[frozenset[str], str]:
        """The syntaxes a frame of this instance can be served in, and the one served as stored."""
        native = tsx.EXPLICIT_VR_LITTLE_ENDIAN
        if not tsx.is_encapsulated(stored.transfer_syntax):
            return frozenset({native, stored.transfer_syntax}), native
        offered = {stored.transfer_syntax}
        if tsx.can_decode(stored.transfer_syntax):
            offered.add(native)
        return frozenset(offered), stored.transfer_syntax

    def instance_syntaxes(self, found: Sequence[StoredInstance]) -> frozenset[str]:
        stored = {s.transfer_syntax for s in found}
        offered = {tsx.EXPLICIT_VR_LITTLE_ENDIAN} if all(self._can_transcode(ts) for ts in stored) else set()
        if len(stored) == 1:
            offered |= stored
        return frozenset(offered)

    @staticmethod
    def _can_transcode(uid: str) -> bool:
        return not tsx.is_encapsulated(uid) or tsx.can_decode(uid)

    # --- WADO-RS: metadata -------------------------------------------------------------------
    def metadata(self, found: Sequence[StoredInstance], base: str) -> Iterator[bytes]:
        """A JSON array of the instances' stored metadata, streamed one instance at a time."""
        yield b"["
        for number, stored in enumerate(found):
            doc = self._metadata_bytes(self.blobs_of(stored))
            uids = stored.uids
            url = f"{base}/studies/{uids.study}/series/{uids.series}/instances/{uids.instance}"
            yield (b", " if number else b"") + absolutize(doc, url)
        yield b"]"

    def _metadata_bytes(self, blobs: InstanceBlobs) -> bytes:
        with self.blobs.open(blobs.metadata) as fp:
            return sidecar_metadata(blobs, fp.read())

    def stored_metadata(self, stored: StoredInstance) -> DicomJson:
        doc: DicomJson = json.loads(self._metadata_bytes(self.blobs_of(stored)))
        return doc

    def open_instance(self, stored: StoredInstance) -> BinaryIO:
        return self.blobs.open(self.blobs_of(stored).instance)

    def bulk_value(self, stored: StoredInstance, path: str) -> bytes:
        return bulk_value(self, stored, path)

    # --- QIDO-RS -----------------------------------------------------------------------------
    def search(self, query: Query, base: str) -> list[DicomJson]:
        """QIDO-RS: matching studies, series or instances as DICOM JSON, shaped by includefield."""
        hits = self.index.search(query)
        asked = {_keyword_tag(k) for k in query.return_keywords()}
        return [self._shape(hit, query, asked, base) for hit in hits]

    def _shape(self, hit: SearchHit, query: Query, asked: set[str], base: str) -> DicomJson:
        attrs: dict[str, Any] = dict(hit.attrs)
        if query.level is Level.INSTANCE:
            # Study and series results carry what the index keeps of their level (all of the
            # Patient and Study modules, the series attributes); an instance result may ask for any
            # attribute of its own, read from its stored metadata. includefield=all returns at
            # least these too.
            missing = asked - _SERVED - set(attrs)
            if missing:
                attrs.update(self._attrs_from_metadata(hit, missing))
        url = f"{base}/studies/{hit.study}"
        if hit.series:
            url += f"/series/{hit.series}"
        if hit.instance:
            url += f"/instances/{hit.instance}"
        attrs[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
        attrs[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
        if query.level is not Level.STUDY:
            attrs.setdefault("0020000D", {"vr": "UI", "Value": [hit.study]})
        if not query.include_all:
            attrs = {k: v for k, v in attrs.items() if k in asked or k in _ALWAYS[query.level]}
        return dict(sorted(attrs.items()))

    def _attrs_from_metadata(self, hit: SearchHit, tags: set[str]) -> DicomJson:
        found = self.index.find_instances(hit.study, hit.series, hit.instance)
        if not found:
            return {}
        doc = self.stored_metadata(found[0])
        return {t: doc[t] for t in tags if t in doc and "BulkDataURI" not in doc[t]}

    # --- change feed -------------------------------------------------------------------------
    def changes(self, query: ChangeFeedQuery, base: str) -> list[DicomJson]:
        """The change feed page, each current entry with its metadata when asked for."""
        return [
            self._change_json(entry, query.include_metadata, base) for entry in self.index.read_changes(query)
        ]

    def latest_change(self, base: str, include_metadata: bool = True) -> DicomJson:
        entry = self.index.latest_change()
        if entry is None:
            raise NotFound("the change feed is empty")
        return self._change_json(entry, include_metadata, base)

    def _change_json(self, entry: ChangeFeedEntry, include_metadata: bool, base: str) -> DicomJson:
        metadata = None
        if include_metadata and entry.state is ChangeState.CURRENT:
            blobs = instance_blobs(self._partition, entry.uids, entry.version)
            try:
                uids = entry.uids
                url = f"{base}/studies/{uids.study}/series/{uids.series}/instances/{uids.instance}"
                metadata = json.loads(absolutize(self._metadata_bytes(blobs), url))
            except NotFound:
                metadata = None  # replaced or deleted since the page was read
        return entry.to_json(metadata, include_metadata)

    # --- delete ------------------------------------------------------------------------------
    def delete(self, study: str, series: str | None = None, instance: str | None = None) -> int:
        removed = self.index.delete(study, series, instance)
        if not removed:
            what = "instance" if instance else "series" if series else "study"
            raise NotFound(f"the {what} was not found")
        for stored in removed:
            for key in self.blobs_of(stored).all():
                try:
                    self.blobs.delete(key)
                except Exception:
                    log.warning("could not remove a deleted instance's blob; a sweep will find it")
        return len(removed)


_ALWAYS = {
    Level.STUDY: {"0020000D", RETRIEVE_URL},
    Level.SERIES: {"0020000D", "0020000E", RETRIEVE_URL},
    Level.INSTANCE: {"0020000D", "0020000E", "00080018", "00080016", RETRIEVE_URL},
}


def _element_bytes(ds: Any, steps: tuple[int, ...]) -> bytes:
    current = ds
    for position, step in enumerate(steps):
        if position % 2 == 0:
            if step not in current:
                raise NotFound("the bulk data element was not found")
            elem = current[step]
            if position == len(steps) - 1:
                value = elem.value
                if not isinstance(value, bytes | bytearray):
                    raise NotFound("the element holds no bulk data")
                return bytes(value)
            current = elem.value
        else:
            if not isinstance(current, Sequence) or step >= len(current):
                raise NotFound("the bulk data element was not found")
            current = current[step]
    raise NotFound("the bulk data element was not found")


def bulk_value(service: DicomwebService, stored: StoredInstance, path: str) -> bytes:
    """The value of one bulk data element, located by its BulkDataURI path."""
    import pydicom

    try:
        steps = parse_bulk_path(path)
    except ValueError as exc:
        raise NotFound(f"no such bulk data: {exc}") from None
    if steps == (PIXEL_DATA,):
        index = service.frame_index(stored)
        if index.number_of_frames == 0:
            raise NotFound("the instance has no pixel data")
        numbers = list(range(1, index.number_of_frames + 1))
        return b"".join(f.data for f in service.iter_frames(stored, index, numbers, "*"))
    with service.open_instance(stored) as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=steps[0] < PIXEL_DATA, defer_size=None)
        return _element_bytes(ds, steps)

"""Blob names: no UIDs (they can carry patient data), spread by a hash, versioned.

An instance version is two blobs side by side, named by the hash of its UIDs and its version:
  `<aa>/<bb>/<hash>.<version>.dcm`   the instance, byte for byte as received
  `<aa>/<bb>/<hash>.<version>.json`  its sidecar: one line of JSON with its frame byte ranges, a
                                     newline, then its metadata as DICOM JSON (BulkDataURI
                                     placeholders). Neither JSON holds a raw newline.

Versions written before December 2026 (16 hex digits, no "-") keep their first layout: a folder
per instance and three blobs, `<aa>/<bb>/<hash>/<version>.dcm`, `.json` (the metadata alone) and
`.frames.json`. A folder per instance cost a directory inode and block per instance on a
filesystem store, and a third blob a third write (an Azure Storage transaction) per instance; a
version now says which layout it has, so stores written before read on unchanged.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import BinaryIO

from shared.core.model import InstanceUids

_LAYOUT = "2-"  # the prefix of a version in the current layout
_BLOCK = 64 * 1024


def new_version() -> str:
    """A fresh version token: unique per write, so a retry never collides with a half-written one."""
    return _LAYOUT + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class InstanceBlobs:
    instance: str
    metadata: str  # the sidecar (metadata after the frame index line), or the metadata alone
    frames: str  # the sidecar too, or the frame index alone
    combined: bool  # the sidecar layout: `metadata` and `frames` are one blob

    def contents(self, frames: bytes, metadata: bytes) -> list[tuple[str, bytes]]:
        """What the blobs beside the instance hold, in this version's layout."""
        if self.combined:
            return [(self.metadata, sidecar(frames, metadata))]
        return [(self.metadata, metadata), (self.frames, frames)]

    def all(self) -> tuple[str, ...]:
        if self.combined:
            return (self.instance, self.metadata)
        return (self.instance, self.metadata, self.frames)


def instance_blobs(partition: str, uids: InstanceUids, version: str) -> InstanceBlobs:
    digest = hashlib.sha256(
        "\x00".join((partition, uids.study, uids.series, uids.instance)).encode("ascii")
    ).hexdigest()
    if version.startswith(_LAYOUT):
        prefix = f"{digest[:2]}/{digest[2:4]}/{digest}.{version}"
        return InstanceBlobs(f"{prefix}.dcm", f"{prefix}.json", f"{prefix}.json", combined=True)
    prefix = f"{digest[:2]}/{digest[2:4]}/{digest}/{version}"  # the first layout
    return InstanceBlobs(f"{prefix}.dcm", f"{prefix}.json", f"{prefix}.frames.json", combined=False)


def sidecar(frames: bytes, metadata: bytes) -> bytes:
    """The sidecar blob of a version: the frame index line, then the metadata."""
    if b"\n" in frames:
        raise ValueError("the frame index JSON must be one line")
    return frames + b"\n" + metadata


def sidecar_frames(fp: BinaryIO) -> bytes:
    """The frame index JSON from an open sidecar: its first line, read in blocks (a reader
    without a buffer, such as a blob download, would otherwise be read byte by byte)."""
    blocks: list[bytes] = []
    while block := fp.read(_BLOCK):
        end = block.find(b"\n")
        if end >= 0:
            blocks.append(block[:end])
            break
        blocks.append(block)
    return b"".join(blocks)


def sidecar_metadata(blobs: InstanceBlobs, data: bytes) -> bytes:
    """The metadata JSON from the bytes of `blobs.metadata`."""
    return data[data.index(b"\n") + 1 :] if blobs.combined else data

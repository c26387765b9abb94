"""Blob names: no UIDs (they can carry patient data), spread by a hash, versioned.

An instance version keeps three blobs side by side, named by the hash of its UIDs and its version:
  `<aa>/<bb>/<hash>.<version>.dcm`          the instance, byte for byte as received
  `<aa>/<bb>/<hash>.<version>.json`         its metadata as DICOM JSON (BulkDataURI placeholders)
  `<aa>/<bb>/<hash>.<version>.frames.json`  its frame byte ranges

Versions written before December 2026 (16 hex digits, no "-") keep their first layout, one folder
per instance: `<aa>/<bb>/<hash>/<version>.dcm` and so on. A folder per instance cost a directory
inode per instance on a filesystem store, for nothing; a version now says which layout it has,
so stores written before read on unchanged.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from shared.core.model import InstanceUids

_LAYOUT = "2-"  # the prefix of a version in the current layout


def new_version() -> str:
    """A fresh version token: unique per write, so a retry never collides with a half-written one."""
    return _LAYOUT + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class InstanceBlobs:
    instance: str
    metadata: str
    frames: str

    def all(self) -> tuple[str, str, str]:
        return (self.instance, self.metadata, self.frames)


def instance_blobs(partition: str, uids: InstanceUids, version: str) -> InstanceBlobs:
    digest = hashlib.sha256(
        "\x00".join((partition, uids.study, uids.series, uids.instance)).encode("ascii")
    ).hexdigest()
    if version.startswith(_LAYOUT):
        prefix = f"{digest[:2]}/{digest[2:4]}/{digest}.{version}"
    else:  # the first layout: a folder per instance
        prefix = f"{digest[:2]}/{digest[2:4]}/{digest}/{version}"
    return InstanceBlobs(f"{prefix}.dcm", f"{prefix}.json", f"{prefix}.frames.json")

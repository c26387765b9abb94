"""Blob names: no UIDs (they can carry patient data), spread by a hash, versioned.

An instance version keeps three blobs side by side under one prefix:
  `<aa>/<bb>/<hash>/<version>.dcm`          the instance, byte for byte as received
  `<aa>/<bb>/<hash>/<version>.json`         its metadata as DICOM JSON (BulkDataURI placeholders)
  `<aa>/<bb>/<hash>/<version>.frames.json`  its frame byte ranges
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from shared.core.model import InstanceUids


def new_version() -> str:
    """A fresh version token: unique per write, so a retry never collides with a half-written one."""
    return secrets.token_hex(8)


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
    prefix = f"{digest[:2]}/{digest[2:4]}/{digest}/{version}"
    return InstanceBlobs(f"{prefix}.dcm", f"{prefix}.json", f"{prefix}.frames.json")

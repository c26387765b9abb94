"""DICOM UID syntax (PS3.5 section 9.1): validation of UIDs that arrive in URLs and queries.

A UID is 1 to 64 characters of digits and dots; its components (between the dots) are non-empty
and have no leading zero unless the component is exactly "0".
"""

from __future__ import annotations

import re

from shared.core.errors import BadRequest

MAX_UID_LENGTH = 64

_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def is_valid_uid(value: str) -> bool:
    """True if `value` is a syntactically valid DICOM UID (no padding, no surrounding spaces)."""
    return 0 < len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None


def require_uid(value: str, what: str) -> str:
    """Return `value` if it is a valid UID, else raise BadRequest naming `what` (never the value)."""
    if not is_valid_uid(value):
        raise BadRequest(f"Invalid {what}: not a valid DICOM UID")
    return value

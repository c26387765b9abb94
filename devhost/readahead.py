"""How much of a request body uvicorn reads ahead of the app: DEVHOST_READ_AHEAD_BYTES, 1 MiB by
default instead of uvicorn's 64 KiB.

uvicorn stops reading a connection once more than its HIGH_WATER_LIMIT bytes of request body are
waiting for the app, and reads again when the app has taken them. The event loop reads up to
256 KiB at a time, so at 64 KiB a STOW-RS body of half a megabyte stops and starts reading a few
times per request, each time a change of the loop's interest in the socket (system calls) and a
wake-up more. At 1 MiB a body of that size is read through. What a connection holds in memory
ahead of the app is bounded by the setting plus one read.

Relied on in uvicorn (0.55) beyond its documented API: the module-level `HIGH_WATER_LIMIT` of its
httptools and h11 protocol modules, which they read at each use. Where a module has no such name,
it is left as it is (and logged).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

logger = logging.getLogger(__name__)

DEFAULT = 1024 * 1024
_MODULES = ("uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl")


def read_ahead_bytes(environ: Mapping[str, str]) -> int:
    """DEVHOST_READ_AHEAD_BYTES: a whole number of bytes from 64 KiB to 64 MiB (SystemExit otherwise)."""
    raw = environ.get("DEVHOST_READ_AHEAD_BYTES", "").strip()
    if not raw:
        return DEFAULT
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"DEVHOST_READ_AHEAD_BYTES must be a whole number of bytes, not {raw!r}") from None
    if not 64 * 1024 <= value <= 64 * 1024 * 1024:
        raise SystemExit(f"DEVHOST_READ_AHEAD_BYTES must be from 65536 to 67108864, not {value}")
    return value


def set_read_ahead(limit: int) -> list[str]:
    """Set uvicorn's read-ahead limit in each HTTP protocol module that has one; their names."""
    done = []
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # h11 or httptools not installed: that protocol cannot be used anyway
            continue
        if not isinstance(getattr(module, "HIGH_WATER_LIMIT", None), int):
            logger.info("%s has no HIGH_WATER_LIMIT: its read-ahead stays as uvicorn sets it", name)
            continue
        module.HIGH_WATER_LIMIT = limit  # type: ignore[attr-defined]
        done.append(name)
    return done

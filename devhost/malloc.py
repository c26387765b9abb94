"""glibc's malloc thresholds for the dev host's processes.

A STOW-RS body reaches the app in chunks of 64 to 256 KiB, and each chunk is copied a few times on
its way to an instance's spool: by the HTTP server, the multipart reader, the spool's join. A
WADO-RS retrieval reads the stored files in chunks of 1 MiB. glibc serves an allocation at or above
its mmap threshold (128 KiB at start, raised only as such blocks are freed) with pages fresh from
mmap, which the kernel faults in and zeroes one by one, and unmaps them at free. Below the
threshold, the block comes from a heap and its pages are reused.

With a fixed threshold of 4 MiB those chunks come from the heap; a block bigger than that (a large
spooled instance, a large metadata document) still has a mapping of its own, returned at free. The
trim threshold is how much free memory at the top of a heap stays with the process rather than
going back to the kernel at each free: 16 MiB.

Nothing is changed when MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ is set (glibc reads them
itself at start), or when DEVHOST_MALLOC is `default`, or where the C library is not glibc. Called
before the worker processes are forked, the settings hold in them too. In Azure, the same two
environment variables can be set as app settings of the Function App.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from collections.abc import Mapping

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_OWN_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc(environ: Mapping[str, str]) -> bool:
    """Set the thresholds (see the module docstring); True if they were set."""
    if environ.get("DEVHOST_MALLOC", "").strip().lower() == "default":
        return False
    if any(name in environ for name in _OWN_SETTINGS):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, as setting it also fixes the trim
    # threshold's dynamic adjustment off.
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        logger.warning("glibc refused the malloc thresholds; its defaults stay")
    return done

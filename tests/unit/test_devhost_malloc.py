"""devhost.malloc: glibc's thresholds, observed through mallinfo2 in a fresh process each time
(the thresholds are process-wide, and glibc's default one moves as blocks are freed)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from devhost.malloc import tune_malloc

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's; this C library is not glibc"
)

# Prints how many blocks have a mapping of their own (mallinfo2's hblks) gained by allocating
# 512 KiB, 1 MiB then 8 MiB (each kept alive), after calling tune_malloc with the environment given.
_PROBE = """
import ctypes, json, os, sys
from devhost.malloc import tune_malloc

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
tuned = tune_malloc(json.loads(sys.argv[1]))
before = libc.mallinfo2().hblks
medium = bytearray(512 * 1024)
chunk = bytearray(1024 * 1024)
after_medium = libc.mallinfo2().hblks
large = bytearray(8 * 1024 * 1024)
after_large = libc.mallinfo2().hblks
print(json.dumps({"tuned": tuned, "medium": after_medium - before, "large": after_large - after_medium}))
"""


def _probe(environ: dict[str, str]) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(environ)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_glibcs_default_maps_a_512_kib_block_of_its_own() -> None:
    """The premise: without the setting, a request or read chunk costs a fresh mapping."""
    assert _probe({"DEVHOST_MALLOC": "default"}) == {"tuned": False, "medium": 2, "large": 1}


def test_tuned_request_and_read_chunks_come_from_the_heap_and_an_8_mib_block_is_still_mapped() -> None:
    assert _probe({}) == {"tuned": True, "medium": 0, "large": 1}


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operators_glibc_setting_is_left_to_glibc(name: str) -> None:
    assert tune_malloc({name: "131072"}) is False


def test_devhost_malloc_default_leaves_glibc_alone() -> None:
    assert tune_malloc({"DEVHOST_MALLOC": " Default "}) is False

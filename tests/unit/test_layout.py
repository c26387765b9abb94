"""The project's shape: dependency direction, deployment requirements, no work at import time."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from shared.core.layout import instance_blobs, new_version, sidecar, sidecar_frames, sidecar_metadata
from shared.core.model import InstanceUids

ROOT = Path(__file__).resolve().parents[2]
VENDOR_PREFIXES = ("azure", "sqlalchemy", "httpx", "starlette", "fastapi", "uvicorn", "psycopg", "requests")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "shared/core").glob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_vendor_sdk(path: Path) -> None:
    vendor = {n for n in _imports(path) if n.split(".")[0] in VENDOR_PREFIXES}
    assert not vendor, f"{path.name} imports {vendor}"


@pytest.mark.parametrize("path", sorted((ROOT / "shared/core").glob("*.py")), ids=lambda p: p.name)
def test_core_does_not_import_outer_layers(path: Path) -> None:
    outer = {
        n
        for n in _imports(path)
        if n.startswith(("shared.adapters", "shared.web", "shared.bootstrap", "functions"))
    }
    assert not outer, f"{path.name} imports {outer}"


def _requirement_names(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")
            out[name] = line.replace(" ", "")
    return out


def test_requirements_txt_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    deployed = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    assert deployed == declared


def test_function_app_imports_without_connecting(tmp_path: Path) -> None:
    """Importing the app (what the Functions host does at cold start) creates no data and opens nothing."""
    data = tmp_path / "data"
    code = (
        "import function_app, shared.bootstrap as b;"
        "fns = function_app.app.get_functions();"
        "assert b._app is None;"
        "print(len(fns))"
    )
    env = {"DICOMWEB_DATA_DIR": str(data), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 20
    assert not data.exists()


def test_every_http_function_uses_the_streaming_request_type() -> None:
    """The HTTP streams extension is an app-wide switch: every HTTP function must take its Request."""
    from azurefunctions.extensions.http.fastapi import Request

    import function_app

    for fn in function_app.app.get_functions():
        trigger = fn.get_trigger()
        if trigger.get_dict_repr()["type"] != "httpTrigger":
            continue
        user = fn.get_user_function()
        assert user.__annotations__.get(trigger.name) in (Request, "Request"), fn.get_function_name()


def test_blob_names_hold_no_uid_and_spread() -> None:
    uids = InstanceUids("1.2.840.99.1", "1.2.840.99.1.2", "1.2.840.99.1.2.3")
    blobs = instance_blobs("default", uids, new_version())
    for name in blobs.all():
        for uid in (uids.study, uids.series, uids.instance):
            assert uid not in name
    first = {
        instance_blobs("default", InstanceUids("1.2", "1.2.3", f"1.2.3.{i}"), "v").instance[:5]
        for i in range(200)
    }
    assert len(first) > 100  # hashed spread over prefixes


def test_versions_differ_and_partitions_separate() -> None:
    uids = InstanceUids("1.2", "1.2.3", "1.2.3.4")
    assert new_version() != new_version()
    assert instance_blobs("a", uids, "v").instance != instance_blobs("b", uids, "v").instance


def test_the_sidecar_holds_the_frame_index_line_then_the_metadata() -> None:
    blobs = instance_blobs("default", InstanceUids("1.2", "1.2.3", "1.2.3.4"), new_version())
    assert blobs.combined and blobs.metadata == blobs.frames and len(blobs.all()) == 2
    metadata = b'{"00204000": {"vr": "LT", "Value": ["two\\nlines"]}}'  # escaped, as JSON writes it
    data = sidecar(b'{"numberOfFrames":1}', metadata)
    assert data.split(b"\n", 1)[0] == b'{"numberOfFrames":1}'
    assert sidecar_metadata(blobs, data) == metadata
    with pytest.raises(ValueError, match="one line"):
        sidecar(b'{\n"numberOfFrames": 1}', metadata)
    first = instance_blobs("default", InstanceUids("1.2", "1.2.3", "1.2.3.4"), "0123456789abcdef")
    assert not first.combined and sidecar_metadata(first, metadata) == metadata


def test_the_frame_index_is_read_from_a_sidecar_in_blocks_whatever_its_length() -> None:
    """A long frame index (thousands of frames) spans several blocks; an unbuffered reader is read
    in blocks, not byte by byte."""
    import io

    frames = b"[" + b",".join(b"[[%d,512]]" % (n * 512) for n in range(20_000)) + b"]"
    data = sidecar(frames, b'{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}')

    class Unbuffered(io.RawIOBase):
        def __init__(self) -> None:
            self.reads: list[int] = []
            self.inner = io.BytesIO(data)

        def readinto(self, buffer: Any) -> int:
            self.reads.append(len(buffer))
            chunk = self.inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    fp = Unbuffered()
    assert sidecar_frames(fp) == frames
    assert len(frames) > 3 * 65536 and len(fp.reads) < 10
    assert sidecar_frames(io.BytesIO(b"[]")) == b"[]"  # no newline: all of it

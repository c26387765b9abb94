"""Fixtures of the behaviour suite: the dev host as a real process, one per backend and settings.

`BACKENDS` is the one place that lists the backend combinations (environment overrides); every
test that uses the `server` fixture runs once per entry. Tests that need other settings (small
limits, overwrite) ask `servers.get(server.backend, {...})` for a second process; processes are
started once per (backend, settings) and stopped at the end of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.behaviour import DICOM, DICOM_JSON, Instance, multipart_body

REPO = Path(__file__).resolve().parents[2]
READY = "devhost listening on "
START_TIMEOUT = 60.0


def _files_sqlite() -> dict[str, str]:
    return {"DICOMWEB_BLOB_STORE": "filesystem", "DICOMWEB_INDEX": "sql"}


def _azurite_blobs() -> dict[str, str]:
    """Azure Blob on Azurite, in containers of this server's own."""
    from tests.services import azurite

    tag = uuid.uuid4().hex[:12]
    return {
        "DICOMWEB_BLOB_STORE": "azure",
        "DICOMWEB_BLOB_CONNECTION_STRING": azurite(),
        "DICOMWEB_BLOB_CONTAINER": f"dicom-{tag}",
        "DICOMWEB_INBOX_CONTAINER": f"inbox-{tag}",
        "DICOMWEB_FAILED_CONTAINER": f"failed-{tag}",
    }


def _azurite_table() -> dict[str, str]:
    from tests.services import azurite

    return {
        **_azurite_blobs(),
        "DICOMWEB_INDEX": "table",
        "DICOMWEB_TABLE_CONNECTION_STRING": azurite(),
        "DICOMWEB_TABLE_PREFIX": f"b{uuid.uuid4().hex[:12]}",
    }


def _azurite_postgresql() -> dict[str, str]:
    from tests.services import fresh_postgres_database

    return {**_azurite_blobs(), "DICOMWEB_INDEX": "sql", "DICOMWEB_INDEX_URL": fresh_postgres_database()}


BACKENDS: dict[str, Callable[[], dict[str, str]]] = {
    "files+sqlite": _files_sqlite,
    "azurite-blob+azurite-table": _azurite_table,
    "azurite-blob+postgresql": _azurite_postgresql,
}
"""Backend combinations: id -> a function giving the environment of one server (fresh containers,
tables or database each time, so servers never share state)."""

# Every setting the suite depends on, pinned so a developer's local.settings.json cannot leak in.
BASE_ENV: dict[str, str] = {
    "DICOMWEB_OVERWRITE_EXISTING": "false",
    "DICOMWEB_PUBLIC_BASE_URL": "",
    "DICOMWEB_MAX_REQUEST_BYTES": str(2 * 1024**3),
    "DICOMWEB_MAX_PARTS": "10000",
    "DICOMWEB_MAX_INSTANCE_BYTES": str(2 * 1024**3),
    "DICOMWEB_QIDO_DEFAULT_LIMIT": "100",
    "DICOMWEB_QIDO_MAX_LIMIT": "1000",
    "DEVHOST_LOG_LEVEL": "warning",
}


@dataclass
class Server:
    """A running dev host: its DICOMweb root URL, data folder and process."""

    backend: str
    root: str  # http://127.0.0.1:<port>/dicomweb
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    client: httpx.Client = field(init=False)
    _blobs: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.root, timeout=60.0)

    # --- requests ------------------------------------------------------------------------------
    def get(self, path: str, accept: str | None = None, **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
        if accept is not None:
            headers["Accept"] = accept
        return self.client.get(self._url(path), headers=headers, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, body: bytes, content_type: str | None, **headers: str) -> httpx.Response:
        all_headers = {"Content-Type": content_type} if content_type is not None else {}
        all_headers.update(headers)
        return self.client.post(self._url(path), content=body, headers=all_headers)

    def delete(self, path: str) -> httpx.Response:
        return self.client.delete(self._url(path))

    def store(self, *instances: Instance | bytes, study: str | None = None) -> httpx.Response:
        """STOW-RS as clients send it: multipart/related with a quoted type, one part per file."""
        content_type, body = multipart_body([i.data if isinstance(i, Instance) else i for i in instances])
        path = "/studies" + (f"/{study}" if study else "")
        return self.post(path, body, content_type, Accept=DICOM_JSON)

    def stored(self, *instances: Instance) -> None:
        """Store instances that must be stored (any failure fails the test here)."""
        response = self.store(*instances)
        assert response.status_code == 200, response.text

    def search(self, path: str, params: Any = None) -> list[dict[str, Any]]:
        response = self.get(path, DICOM_JSON, params=params)
        assert response.status_code == 200, response.text
        result = response.json() if response.content else []
        assert isinstance(result, list)
        return result

    def retrieve_instance(self, instance: Instance) -> httpx.Response:
        """The instance as stored (single part, `transfer-syntax=*`)."""
        return self.get(instance.path, f"{DICOM}; transfer-syntax=*")

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else self.root + path

    # --- data folder ---------------------------------------------------------------------------
    def blob_files(self) -> set[str]:
        """The names in the server's blob store (files or Azure Blob), listed through its adapter."""
        if self._blobs is None:
            from shared.bootstrap import build_blob_store
            from shared.config import Settings

            self._blobs = build_blob_store(Settings.from_env(self.env))
        return set(self._blobs.list())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def _start(backend: str, overrides: Mapping[str, str], base: Path) -> Server:
    base.mkdir(parents=True, exist_ok=True)
    data_dir = base / "data"
    log_path = base / "devhost.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DICOMWEB_", "DEVHOST_")) and k != "AzureWebJobsStorage"
    }
    env.update(BASE_ENV)
    env.update(BACKENDS[backend]())
    env.update(overrides)
    env["DICOMWEB_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devhost", "--host", "127.0.0.1", "--port", "0"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith(READY):
                root = line[len(READY) :].strip().rstrip("/")
                server = Server(backend, root, data_dir, log_path, process, env)
                health = httpx.get(root.rsplit("/", 1)[0] + "/health", timeout=10)
                assert health.status_code == 200, health.text
                return server
        if process.poll() is not None:
            raise RuntimeError(f"the dev host exited with {process.returncode}:\n{text[-4000:]}")
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=15)
    raise RuntimeError(
        f"the dev host was not ready within {START_TIMEOUT} s:\n{log_path.read_text()[-4000:]}"
    )


class ServerPool:
    """Dev host processes, one per (backend, settings), started on first use."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._servers: dict[tuple[str, tuple[tuple[str, str], ...]], Server] = {}

    def get(self, backend: str, overrides: Mapping[str, str] | None = None) -> Server:
        key = (backend, tuple(sorted((overrides or {}).items())))
        server = self._servers.get(key)
        if server is None or server.process.poll() is not None:
            folder = self._base / f"{backend.replace('+', '-')}-{len(self._servers)}"
            server = _start(backend, dict(overrides or {}), folder)
            self._servers[key] = server
        return server

    def stop_all(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers.clear()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("devhost"))
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="session", params=list(BACKENDS))
def server(request: pytest.FixtureRequest, servers: ServerPool) -> Server:
    """The dev host with default settings, for each backend combination."""
    return servers.get(request.param)

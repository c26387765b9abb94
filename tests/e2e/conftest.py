"""Fixtures of the end-to-end suite: one dev host process for the session, fed with the sample corpus.

The dev host runs as `python -m devhost --port <free port>` with a fresh data directory (a new
SQLite index and blob folder) and every setting the tests depend on pinned, so a developer's
local.settings.json changes nothing. It is stopped, and waited for, at the end of the session.

`DICOMWEB_PUBLIC_BASE_URL` is set because `dicomweb-client` (0.61) sends `Host: 127.0.0.1`
without the port on GETs and small POSTs; a server that builds RetrieveURL and BulkDataURI from
the Host header (as this one does when the setting is empty) would then hand out URLs on port 80.
The port is therefore chosen here (a free one, retried if taken meanwhile) rather than by
`--port 0`, so that the public URL is known before the process starts.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from tests.e2e import samples

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
_LISTENING = re.compile(r"devhost listening on (http://\S+)")
_START_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class DevHost:
    url: str  # the DICOMweb root, e.g. http://127.0.0.1:41234/dicomweb
    origin: str  # scheme://host:port
    data_dir: Path
    log: Path


@dataclass(frozen=True, slots=True)
class Corpus:
    """The stored samples and the store response dataset of each batch."""

    responses: dict[str, Dataset]  # batch -> the dataset store_instances returned
    samples: dict[str, samples.Sample]  # name -> sample

    def dataset(self, name: str) -> Dataset:
        return samples.sent(self.samples[name])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(data_dir: Path, public_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMWEB_", "DEVHOST_"))}
    env.update(
        DICOMWEB_DATA_DIR=str(data_dir),
        DICOMWEB_BLOB_STORE="filesystem",
        DICOMWEB_INDEX="sql",
        DICOMWEB_INDEX_URL="",
        DICOMWEB_PARTITION="default",
        DICOMWEB_PUBLIC_BASE_URL=public_url,
        DICOMWEB_OVERWRITE_EXISTING="false",
        DICOMWEB_QIDO_DEFAULT_LIMIT="100",
        DICOMWEB_QIDO_MAX_LIMIT="1000",
        DICOMWEB_BULKDATA_THRESHOLD="1024",
        DEVHOST_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait_listening(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if found := _LISTENING.search(text):
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the dev host did not start (exit code {process.poll()}):\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _start(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    for _attempt in range(3):
        port = _free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "devhost", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO_ROOT,
                env=_settings(data_dir, f"http://127.0.0.1:{port}/dicomweb"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            return process, _wait_listening(process, log)
        except RuntimeError:
            _stop(process)
            if "address already in use" not in log.read_text(errors="replace").lower():
                raise
    raise RuntimeError("no free port for the dev host")


@pytest.fixture(scope="session")
def dev_host(request: pytest.FixtureRequest) -> Iterator[DevHost]:
    """`python -m devhost` over a fresh data directory, up until the session ends.

    The directory is made with `tempfile`, not pytest's `tmp_path_factory`: pytest removes old
    base temp directories when other sessions of the same user start, which would pull the data
    out from under a running server when several test sessions run at once. It is kept (and
    named on stderr) when a test failed, for the server log.
    """
    root = Path(tempfile.mkdtemp(prefix="dicomweb-e2e-"))
    data_dir, log = root / "data", root / "devhost.log"
    try:
        process, url = _start(data_dir, log)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        url = url.rstrip("/")
        origin = re.sub(r"^(http://[^/]+).*$", r"\1", url)
        health = requests.get(f"{origin}/health", timeout=10)
        assert health.status_code == 200, health.text
        yield DevHost(url=url, origin=origin, data_dir=data_dir, log=log)
    finally:
        _stop(process)
        if request.session.testsfailed:
            print(f"\ndev host data and log kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def client(dev_host: DevHost) -> Iterator[DICOMwebClient]:
    web = DICOMwebClient(dev_host.url)
    yield web
    web._session.close()


@pytest.fixture(scope="session")
def corpus(client: DICOMwebClient) -> Corpus:
    """Every sample of `samples.STORED`, stored batch by batch with `store_instances`."""
    responses = {
        batch: client.store_instances([samples.read(s.name, repair=s.repair) for s in members])
        for batch, members in samples.BATCHES.items()
    }
    return Corpus(responses=responses, samples=dict(samples.BY_NAME))

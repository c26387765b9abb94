"""`python -m devhost` with DEVHOST_WORKERS=2: kept-alive connections are spread over the workers.

Each test starts its own dev host (the e2e suite's helpers, a fresh data directory) with two
worker processes, and waits until both log that they accept connections: before that, the one
that is up takes every connection, as it should. Which worker served a request is the `pid` of
the /health body. The connections are opened one after the other, each with a first request
answered before the next opens, so the counts the workers see are settled at each step.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, _free_port, _settings, _stop, _wait_listening

pytestmark = pytest.mark.e2e

_ACCEPTING = re.compile(r"worker (\d+) accepts connections \(least-connections, slot (\d+)\)")
_WAIT = 60.0  # seconds: a bound on waiting for the workers, not a measure


@dataclass
class Workers:
    port: int
    log: Path

    def accepting(self) -> dict[int, int]:
        """pid -> slot of every worker that has logged that it accepts connections."""
        text = self.log.read_text(errors="replace")
        return {int(pid): int(slot) for pid, slot in _ACCEPTING.findall(text)}

    def wait_accepting(self, count: int) -> dict[int, int]:
        deadline = time.monotonic() + _WAIT
        while time.monotonic() < deadline:
            found = self.accepting()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{count} workers never accepted connections:\n{self.log.read_text()[-4000:]}")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


def _pid(connection: http.client.HTTPConnection) -> int:
    """The pid of the worker that answers GET /health on this (kept-alive) connection."""
    connection.request("GET", "/health")
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 200, body
    assert response.getheader("Connection", "keep-alive").lower() != "close"
    return int(body["pid"])


@pytest.fixture
def workers() -> Iterator[Workers]:
    root = Path(tempfile.mkdtemp(prefix="dicomweb-workers-"))
    log = root / "devhost.log"
    port = _free_port()
    env = {
        **_settings(root / "data", f"http://127.0.0.1:{port}/dicomweb"),
        "DEVHOST_WORKERS": "2",
        "DEVHOST_LOG_LEVEL": "info",  # the workers' "accepts connections" lines
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "devhost", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(process, log)
        yield Workers(port=port, log=log)
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)


def test_four_kept_alive_connections_are_served_two_by_each_worker(workers: Workers) -> None:
    pids = set(workers.wait_accepting(2))
    connections = [workers.connect() for _ in range(4)]
    try:
        served_by = [_pid(connection) for connection in connections]
        for _round in range(3):  # each connection stays with its worker
            assert [_pid(connection) for connection in connections] == served_by
    finally:
        for connection in connections:
            connection.close()
    assert set(served_by) == pids
    assert sorted(collections.Counter(served_by).values()) == [2, 2]


def test_a_killed_worker_is_replaced_and_the_replacement_gets_the_new_connections(workers: Workers) -> None:
    slots = workers.wait_accepting(2)
    connections = [workers.connect() for _ in range(4)]
    fresh: list[http.client.HTTPConnection] = []
    try:
        served_by = [_pid(connection) for connection in connections]
        killed, survivor = served_by[0], next(pid for pid in served_by if pid != served_by[0])
        os.kill(killed, signal.SIGKILL)

        replacement, slot = next(
            (pid, slot) for pid, slot in workers.wait_accepting(3).items() if pid not in slots
        )
        assert slot == slots[killed]  # the dead worker's slot, and its stale count, are taken over

        # The survivor still holds its two connections, the replacement none: both new ones go to it.
        fresh = [workers.connect() for _ in range(2)]
        assert [_pid(connection) for connection in fresh] == [replacement, replacement]
        kept = [c for c, pid in zip(connections, served_by, strict=True) if pid == survivor]
        assert [_pid(connection) for connection in kept] == [survivor, survivor]
    finally:
        for connection in connections + fresh:
            connection.close()

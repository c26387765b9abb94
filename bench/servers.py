"""Server processes under test: each starts on free ports with a fresh, empty temporary store."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import urllib3

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerError(RuntimeError):
    """A server could not be started (the message says why, for the report)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server started as a child process in its own session, stopped by its process-group id."""

    name = "server"

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix=f"dwbench-{self.name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.version = "unknown"

    # -- to be provided by subclasses
    @property
    def root(self) -> str:
        """The DICOMweb root URL (no trailing slash)."""
        raise NotImplementedError

    @property
    def health_url(self) -> str:
        raise NotImplementedError

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        """argv, environment and working directory."""
        raise NotImplementedError

    def describe(self) -> str:
        """A version string, read once the server answers."""
        return "unknown"

    # -- lifecycle
    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError(f"{self.name} is not running")
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def start(self, timeout: float = 90.0) -> None:
        argv, env, cwd = self.command()
        self._log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            raise ServerError(f"{self.name}: cannot start {argv[0]}: {exc}") from exc
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1.0, read=5.0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with code {self.proc.returncode}: {self.log_tail()}")
            try:
                if http.request("GET", self.health_url).status == 200:
                    self.version = self.describe()
                    return
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.2)
        raise ServerError(f"{self.name} not healthy after {timeout:.0f}s: {self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, nbytes: int = 1500) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-nbytes:].decode("utf-8", "replace").strip()

    def store_bytes(self) -> int:
        """Bytes on disk in the server's store folder."""
        return sum(p.stat().st_size for p in self.workdir.rglob("*") if p.is_file())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            pgid = os.getpgid(self.proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


class OursServer(ServerProcess):
    """This repository's dev host: `python -m devhost` with DICOMWEB_DATA_DIR in a temporary folder."""

    name = "ours"
    workers = min(os.cpu_count() or 1, 4)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicomweb"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        if not (REPO_ROOT / "function_app.py").exists():
            raise ServerError("ours: function_app.py does not exist yet in the repository")
        data = self.workdir / "data"
        data.mkdir()
        env = dict(os.environ, DICOMWEB_DATA_DIR=str(data), PYTHONUNBUFFERED="1")
        # As deployed: one worker process per core (FUNCTIONS_WORKER_PROCESS_COUNT in Azure), the
        # way Orthanc's threads use every core. DEVHOST_WORKERS in the environment overrides it.
        env.setdefault("DEVHOST_WORKERS", str(self.workers))
        python = REPO_ROOT / ".venv" / "bin" / "python"
        exe = str(python) if python.exists() else sys.executable
        return [exe, "-m", "devhost", "--host", "127.0.0.1", "--port", str(self.port)], env, REPO_ROOT

    def describe(self) -> str:
        try:
            head = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip()
            changes = " + uncommitted changes" if dirty else ""
            workers = os.environ.get("DEVHOST_WORKERS") or self.workers
            return f"devhost @ {head or 'unknown'}{changes}, {workers} worker process(es)"
        except OSError:
            return "devhost"

"""The real services the tests use besides files and SQLite: Azurite and PostgreSQL.

`.ci/run` starts both and exports where they listen:
  DICOMWEB_TEST_AZURITE   an Azure Storage connection string (Azurite's well-known dev account)
  DICOMWEB_TEST_POSTGRES  a SQLAlchemy URL of a database the tests may fill and empty
Outside CI, when a variable is missing, the service is started here for the test session if it is
installed (`npm install` for Azurite, Debian's postgresql for PostgreSQL) and stopped at the end.
A missing service skips the tests that need it, with the reason, except under CI=true, where it
fails them: CI must never go green without the backends it promises.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PG_BIN = Path("/usr/lib/postgresql")


def azurite_connection_string(blob_port: int, queue_port: int, table_port: int) -> str:
    host = "http://127.0.0.1"
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={host}:{blob_port}/devstoreaccount1;"
        f"QueueEndpoint={host}:{queue_port}/devstoreaccount1;"
        f"TableEndpoint={host}:{table_port}/devstoreaccount1;"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def _unavailable(what: str, how: str) -> None:
    message = f"{what} is not available ({how})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " - CI must run every backend", pytrace=False)
    pytest.skip(message)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


@cache
def _start_azurite() -> str | None:
    binary = ROOT / "node_modules/.bin/azurite"
    if not binary.exists():
        return None
    ports = [_free_port() for _ in range(3)]
    process = subprocess.Popen(
        [
            str(binary), "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--inMemoryPersistence",
            "--blobHost", "127.0.0.1", "--blobPort", str(ports[0]),
            "--queueHost", "127.0.0.1", "--queuePort", str(ports[1]),
            "--tableHost", "127.0.0.1", "--tablePort", str(ports[2]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    atexit.register(_stop, process)
    if not all(_wait_port(port) for port in ports):
        return None
    return azurite_connection_string(*ports)


def azurite() -> str:
    """An Azure Storage connection string to Azurite (skips or fails the test when there is none)."""
    value = os.environ.get("DICOMWEB_TEST_AZURITE") or _start_azurite()
    if not value:
        _unavailable("Azurite", "run `npm install` or set DICOMWEB_TEST_AZURITE")
    assert value is not None
    return value


@cache
def _start_postgres() -> str | None:
    versions = sorted(PG_BIN.glob("*/bin/initdb"))
    if not versions:
        return None
    bin_dir = versions[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    atexit.register(shutil.rmtree, folder, True)
    atexit.register(
        subprocess.run,
        [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
        capture_output=True,
    )
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"


def postgres_server() -> str:
    """A SQLAlchemy URL of the PostgreSQL server's maintenance database (skips or fails without one)."""
    value = os.environ.get("DICOMWEB_TEST_POSTGRES") or _start_postgres()
    if not value:
        _unavailable("PostgreSQL", "install Debian's postgresql or set DICOMWEB_TEST_POSTGRES")
    assert value is not None
    return value


def fresh_postgres_database() -> str:
    """A new, empty database on the test server; each test that needs isolation gets its own."""
    from sqlalchemy import create_engine, text

    server = postgres_server()
    name = f"t_{uuid.uuid4().hex[:16]}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"

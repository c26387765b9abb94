"""`python -m devhost [--host 127.0.0.1] [--port 7071]`: serve the Functions app with uvicorn.

Like `func start`, local.settings.json (repository root) fills the environment from its
`Values` without overriding variables already set, and its `Host.LocalHttpPort` / `Host.CORS`
are defaults. Environment: DEVHOST_HOST, DEVHOST_PORT, DEVHOST_APP (`module:attr`, default
`function_app:app`), DEVHOST_CORS_ORIGINS (comma list, default `*`), DEVHOST_LOG_LEVEL
(default info), DEVHOST_TRIGGERS (default on; `off` serves HTTP only: no blob, Service Bus or
timer triggers; see devhost.triggers for their settings), DEVHOST_WORKERS (worker processes;
default FUNCTIONS_WORKER_PROCESS_COUNT, else 1), DEVHOST_MALLOC (`default` leaves glibc's malloc
thresholds as they are; see devhost.malloc), DEVHOST_READ_AHEAD_BYTES (how much of a request body
is read ahead of the app, default 1 MiB; see devhost.readahead). Once the socket is bound it prints
`devhost listening on http://HOST:PORT/<prefix>` (port 0 picks a free port and prints the real
one).

With several workers they share the listening socket, and each new connection goes to the worker
with the fewest open connections (devhost.balance): per connection, since a kept-alive connection
stays with its worker. In Azure the Functions host dispatches each invocation to a worker process
itself, whichever connection it came on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from devhost.balance import balancing
from devhost.discovery import discover
from devhost.malloc import tune_malloc
from devhost.readahead import read_ahead_bytes, set_read_ahead
from devhost.routing import read_route_prefix
from devhost.server import build_asgi_app
from devhost.settings import DEFAULT_APP, apply_values, load_function_app, read_local_settings
from devhost.triggers import TriggerHost, triggers_enabled

logger = logging.getLogger("devhost")

_TRIGGER_LOCK = "DEVHOST_TRIGGER_LOCK"  # set by the parent of a multi-process run

REPO_ROOT = Path(__file__).resolve().parent.parent


def _parse_args(argv: Sequence[str] | None, host_settings: Mapping[str, Any]) -> argparse.Namespace:
    default_port = os.environ.get("DEVHOST_PORT") or str(host_settings.get("LocalHttpPort", 7071))
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("DEVHOST_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(default_port))
    return parser.parse_args(argv)


def _cors_origins(host_settings: Mapping[str, Any]) -> list[str]:
    text = os.environ.get("DEVHOST_CORS_ORIGINS")
    if text is None:
        text = str(host_settings.get("CORS") or "*")
    return [origin.strip() for origin in text.split(",") if origin.strip()]


def _url(host: str, port: int, prefix: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/{prefix}"


async def _serve(config: uvicorn.Config, prefix: str) -> None:
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        port = config.port
        for listener in server.servers:
            for sock in listener.sockets:
                port = int(sock.getsockname()[1])
        print(f"devhost listening on {_url(config.host, port, prefix)}", flush=True)
    await task


def _workers(environ: Mapping[str, str]) -> int:
    """DEVHOST_WORKERS, else FUNCTIONS_WORKER_PROCESS_COUNT (the Functions host's setting), else 1."""
    for name in ("DEVHOST_WORKERS", "FUNCTIONS_WORKER_PROCESS_COUNT"):
        raw = environ.get(name, "").strip()
        if raw:
            if not raw.isdigit() or not 1 <= int(raw) <= 10:
                raise SystemExit(f"{name} must be a whole number from 1 to 10, got {raw!r}")
            return int(raw)
    return 1


def _configure_logging() -> str:
    log_level = os.environ.get("DEVHOST_LOG_LEVEL", "info").lower()
    logging.basicConfig(
        level=logging.DEBUG if log_level == "trace" else log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return log_level


def build_served_app() -> ASGIApp:
    """The ASGI app of one server process: the Functions app, its routes and its triggers.

    Reads everything from the environment, which `main` has filled; in a worker process of a
    multi-process run (DEVHOST_WORKERS > 1) uvicorn calls it as the app factory.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    settings = read_local_settings(REPO_ROOT / "local.settings.json")
    app = load_function_app(os.environ.get("DEVHOST_APP", DEFAULT_APP))
    prefix = read_route_prefix(REPO_ROOT / "host.json")
    lock = os.environ.get(_TRIGGER_LOCK)
    triggers = None
    if triggers_enabled(os.environ):
        triggers = TriggerHost(discover(app), primary_lock=Path(lock) if lock else None)
    else:
        logger.info("DEVHOST_TRIGGERS=off: serving HTTP functions only")
    return build_asgi_app(
        app, route_prefix=prefix, cors_origins=_cors_origins(settings.host), background=triggers
    )


def worker_app() -> ASGIApp:
    """uvicorn's app factory in each worker process of a multi-process run."""
    _configure_logging()
    return build_served_app()


def main(argv: Sequence[str] | None = None) -> None:
    settings = read_local_settings(REPO_ROOT / "local.settings.json")
    applied = apply_values(settings.values, os.environ)
    # What the Functions host would find in the app settings: the %SETTING% names that trigger
    # bindings use, with the project's embedded defaults when neither the environment nor
    # local.settings.json sets them.
    from shared.config import apply_binding_defaults

    apply_binding_defaults(os.environ)
    tune_malloc(os.environ)  # before the workers are forked, so that they have it too
    set_read_ahead(read_ahead_bytes(os.environ))
    args = _parse_args(argv, settings.host)
    log_level = _configure_logging()
    if applied:
        logger.info("local.settings.json set %d variables: %s", len(applied), ", ".join(sorted(applied)))
    workers = _workers(os.environ)
    if workers > 1 and not hasattr(os, "fork"):
        logger.warning("DEVHOST_WORKERS=%d needs fork (Linux, macOS): serving with one process", workers)
        workers = 1
    if workers > 1:
        _serve_workers(args, log_level, workers)
        return
    config = uvicorn.Config(
        build_served_app(),
        host=args.host,
        port=args.port,
        log_level=log_level,
        access_log=False,  # devhost.server.AccessLog writes one line per request
        lifespan="on",
        workers=1,
    )
    prefix = read_route_prefix(REPO_ROOT / "host.json")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C: uvicorn has shut down (lifespan included)
        _run(_serve(config, prefix))


def _serve_workers(args: argparse.Namespace, log_level: str, workers: int) -> None:
    """Several worker processes on one listening socket, as FUNCTIONS_WORKER_PROCESS_COUNT gives in
    Azure: CPU-bound work (parsing DICOM, writing the index) uses every core.

    Each worker builds its own app (stores, index connections, in-process event queue); the
    blob and timer triggers run in one of them (devhost.triggers). The parent only supervises:
    it restarts a worker that dies, and Ctrl+C or SIGTERM stops them all. A worker accepts a new
    connection only while no live worker has fewer open connections (devhost.balance), where
    uvicorn's workers would race for it.
    """
    import multiprocessing

    import uvicorn._subprocess
    from uvicorn.supervisors import Multiprocess

    # The workers are forked from this process once it has imported the app and its libraries
    # (pydicom, numpy, ...): they share those pages instead of each importing its own copy, about
    # 40 MB less per worker. uvicorn spawns by default; its module-level context is swapped for
    # fork. BLAS single-threaded first: a thread pool does not survive a fork.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    load_function_app(os.environ.get("DEVHOST_APP", DEFAULT_APP))
    forked = hasattr(uvicorn._subprocess, "spawn")  # uvicorn 0.55's name; otherwise workers are spawned
    if forked:
        uvicorn._subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]
    else:
        logger.warning("this uvicorn has no _subprocess.spawn: workers are spawned, not forked")
    # A forked worker starts with the supervisor's signal handlers (which only queue the signal
    # for the supervisor's loop) until its server installs its own: back to the defaults.
    os.register_at_fork(after_in_child=_default_signal_handlers)
    gc.freeze()  # what is imported stays out of the collector's passes, which would un-share it

    config = uvicorn.Config(
        "devhost.__main__:worker_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        workers=workers,
    )
    sock = config.bind_socket()
    sock.listen(config.backlog)  # connections wait in the backlog until a worker accepts them
    port = int(sock.getsockname()[1])
    handle, lock_path = tempfile.mkstemp(prefix="devhost-triggers-", suffix=".lock")
    os.close(handle)
    os.environ[_TRIGGER_LOCK] = lock_path  # inherited by the workers
    prefix = read_route_prefix(REPO_ROOT / "host.json")
    logger.info("%d worker processes", workers)
    print(f"devhost listening on {_url(args.host, port, prefix)}", flush=True)
    try:
        with balancing(forked=forked):
            Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(lock_path)


def _default_signal_handlers() -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGTTIN", "SIGTTOU"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL)


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:  # uvloop when installed (a dev extra): the loop uvicorn.run itself would pick
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    main()

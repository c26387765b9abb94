"""`python -m devhost [--host 127.0.0.1] [--port 7071]`: serve the Functions app with uvicorn.

Like `func start`, local.settings.json (repository root) fills the environment from its
`Values` without overriding variables already set, and its `Host.LocalHttpPort` / `Host.CORS`
are defaults. Environment: DEVHOST_HOST, DEVHOST_PORT, DEVHOST_APP (`module:attr`, default
`function_app:app`), DEVHOST_CORS_ORIGINS (comma list, default `*`), DEVHOST_LOG_LEVEL
(default info), DEVHOST_TRIGGERS (default on; `off` serves HTTP only: no blob, Service Bus or
timer triggers; see devhost.triggers for their settings). Once the socket is bound it prints
`devhost listening on http://HOST:PORT/<prefix>` (port 0 picks a free port and prints the real
one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from devhost.discovery import discover
from devhost.routing import read_route_prefix
from devhost.server import build_asgi_app
from devhost.settings import DEFAULT_APP, apply_values, load_function_app, read_local_settings
from devhost.triggers import TriggerHost, triggers_enabled

logger = logging.getLogger("devhost")

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


def main(argv: Sequence[str] | None = None) -> None:
    settings = read_local_settings(REPO_ROOT / "local.settings.json")
    applied = apply_values(settings.values, os.environ)
    # What the Functions host would find in the app settings: the %SETTING% names that trigger
    # bindings use, with the project's embedded defaults when neither the environment nor
    # local.settings.json sets them.
    from shared.config import apply_binding_defaults

    apply_binding_defaults(os.environ)
    args = _parse_args(argv, settings.host)
    log_level = os.environ.get("DEVHOST_LOG_LEVEL", "info").lower()
    logging.basicConfig(
        level=logging.DEBUG if log_level == "trace" else log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if applied:
        logger.info("local.settings.json set %d variables: %s", len(applied), ", ".join(sorted(applied)))
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    app = load_function_app(os.environ.get("DEVHOST_APP", DEFAULT_APP))
    prefix = read_route_prefix(REPO_ROOT / "host.json")
    triggers = TriggerHost(discover(app)) if triggers_enabled(os.environ) else None
    if triggers is None:
        logger.info("DEVHOST_TRIGGERS=off: serving HTTP functions only")
    asgi_app = build_asgi_app(
        app, route_prefix=prefix, cors_origins=_cors_origins(settings.host), background=triggers
    )
    config = uvicorn.Config(
        asgi_app,
        host=args.host,
        port=args.port,
        log_level=log_level,
        access_log=False,  # devhost.server.AccessLog writes one line per request
        lifespan="on",
        workers=1,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C: uvicorn has shut down (lifespan included)
        _run(_serve(config, prefix))


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:  # uvloop when installed (a dev extra): the loop uvicorn.run itself would pick
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    main()

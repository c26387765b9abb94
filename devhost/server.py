"""The ASGI application that serves a FunctionApp's HTTP functions locally.

Layers, outermost first: one access-log line per request -> CORS (preflight answered here) ->
`/health` and the function router -> the user function. An unhandled exception is logged with
its traceback and answered with a bare 500, as the Functions host does. The ASGI lifespan starts
and stops the background work given (the non-HTTP triggers).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import quote

import azure.functions as func
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devhost.discovery import FunctionSpec, discover, http_functions
from devhost.invoke import call_http_function, is_classic
from devhost.routing import MethodNotAllowed, Route, Router, RouteTemplate, join_route

__all__ = ["CORS_ALLOW_METHODS", "CORS_EXPOSE_HEADERS", "HEALTH_PATH", "Background", "build_asgi_app"]

logger = logging.getLogger(__name__)

HEALTH_PATH = "/health"
CORS_ALLOW_METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS")
CORS_EXPOSE_HEADERS = ("Content-Type", "Content-Length", "Warning", "Location")


def _raw_path(scope: Scope) -> str:
    """The percent-encoded request path without its query string."""
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw).decode("latin-1").split("?", 1)[0]
    return quote(str(scope["path"]), safe="/:@!$&'()*+,;=-._~")


class Background(Protocol):
    """Work that lives as long as the server: started at lifespan startup, stopped at shutdown."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _HttpTarget:
    __slots__ = ("classic", "spec")

    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self.classic = is_classic(spec)


class FunctionHost:
    """Routes requests to HTTP functions; answers /health, 404, 405 and 500 itself."""

    def __init__(
        self, specs: Sequence[FunctionSpec], route_prefix: str, background: Background | None = None
    ) -> None:
        self.background = background
        routes: list[Route[_HttpTarget]] = []
        for spec in specs:
            template_text = join_route(route_prefix, spec.route)
            try:
                template = RouteTemplate(template_text)
            except ValueError as error:
                raise ValueError(f"function {spec.name!r}: {error}") from error
            routes.append(Route(template, spec.methods, _HttpTarget(spec)))
        self.router = Router(routes)
        self.function_count = len(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        method = str(scope["method"]).upper()
        if scope["path"] == HEALTH_PATH:
            await self._health(method)(scope, receive, send)
            return
        resolution = self.router.resolve(method, _raw_path(scope))
        if resolution is None:
            await Response(status_code=404)(scope, receive, send)
        elif isinstance(resolution, MethodNotAllowed):
            allow = ", ".join(resolution.allowed)
            await Response(status_code=405, headers={"Allow": allow})(scope, receive, send)
        else:
            scope.setdefault("state", {})["function"] = resolution.route.target.spec.name
            await self._invoke(resolution.route.target, resolution.params, scope, receive, send)

    def _health(self, method: str) -> Response:
        if method not in ("GET", "HEAD"):
            return Response(status_code=405, headers={"Allow": "GET, HEAD"})
        # pid: which worker process answered, with DEVHOST_WORKERS > 1
        return JSONResponse({"status": "ok", "functions": self.function_count, "pid": os.getpid()})

    async def _invoke(
        self, target: _HttpTarget, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            response = await call_http_function(target.spec, scope, receive, params, classic=target.classic)
            await response(scope, receive, tracking_send)
        except Exception:
            logger.exception("function %s raised an unhandled exception", target.spec.name)
            if not started:
                await Response(status_code=500)(scope, receive, send)
            # Otherwise the headers are gone: the response stays incomplete and the server
            # drops the connection, so the client cannot mistake a cut body for a whole one.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.background is not None:
                        await self.background.start()
                except Exception as error:
                    logger.exception("the dev host's triggers did not start")
                    await send({"type": "lifespan.startup.failed", "message": type(error).__name__})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self.background is not None:
                        await self.background.stop()
                except Exception:
                    logger.exception("the dev host's triggers did not stop cleanly")
                await send({"type": "lifespan.shutdown.complete"})
                return


class AccessLog:
    """One INFO line per HTTP request: method, function name, status, ms.

    Neither the query string (QIDO queries can carry patient names) nor the path (it holds UIDs)
    is logged at INFO; the raw, percent-encoded path is logged at DEBUG, so that no decoded
    control character reaches the log.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            elapsed_ms = (time.perf_counter() - began) * 1000
            function = scope.get("state", {}).get("function", "-")
            logger.info("%s %s %d %.1fms", scope["method"], function, status, elapsed_ms)
            logger.debug("%s %s %d", scope["method"], _raw_path(scope), status)


def build_asgi_app(
    app: func.FunctionApp,
    *,
    route_prefix: str,
    cors_origins: list[str],
    background: Background | None = None,
) -> ASGIApp:
    """An ASGI app serving the HTTP functions of `app` under `route_prefix` ("" for none).

    `cors_origins` lists the browser origins allowed ("*" for any); an empty list turns CORS off.
    `background` (the non-HTTP triggers, `devhost.triggers.TriggerHost`) starts and stops with
    the ASGI lifespan.
    """
    host = FunctionHost(http_functions(discover(app)), route_prefix, background)
    inner: ASGIApp = host
    if cors_origins:
        inner = CORSMiddleware(
            host,
            allow_origins=cors_origins,
            allow_methods=CORS_ALLOW_METHODS,
            allow_headers=["*"],
            expose_headers=CORS_EXPOSE_HEADERS,
        )
    logger.debug("serving %d HTTP functions under /%s", host.function_count, route_prefix)
    return AccessLog(inner)

"""What every DICOMweb handler shares: the error model, the base URL, JSON answers, Warning headers."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ParamSpec

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shared.bootstrap import App, get_app
from shared.core.errors import DicomwebError
from shared.core.frames import PixelDataError
from shared.core.media import Negotiated, Offer, negotiate
from shared.core.uids import require_uid

log = logging.getLogger(__name__)
P = ParamSpec("P")

DICOM_JSON = "application/dicom+json"
JSON_OFFERS = (Offer(DICOM_JSON), Offer("application/json"))


def error_response(exc: BaseException) -> Response:
    """The one place that maps an error to a response; a 500 never shows internals."""
    if isinstance(exc, DicomwebError):
        return Response(exc.message + "\n", status_code=exc.status, media_type="text/plain")
    if isinstance(exc, PixelDataError):
        return Response(
            "the stored pixel data cannot be decoded into the representation asked for\n",
            status_code=406,
            media_type="text/plain",
        )
    if isinstance(exc, ClientDisconnect):
        return Response("the client closed the request\n", status_code=400, media_type="text/plain")
    log.error("unhandled error: %s", type(exc).__name__)
    log.debug("unhandled error", exc_info=exc)
    return Response("internal server error\n", status_code=500, media_type="text/plain")


def guarded(handler: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    """Turn every error raised before the response starts into a DICOMweb-style answer."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await handler(*args, **kwargs)
        except Exception as exc:
            return error_response(exc)

    return wrapper


def base_url(request: Request, app: App) -> str:
    """The DICOMweb root as the client sees it (for RetrieveURL and BulkDataURI)."""
    if app.settings.public_base_url:
        return app.settings.public_base_url.rstrip("/")
    headers = request.headers
    # From the scope, not request.url: building the URL object costs more than the whole rest.
    scheme = (headers.get("x-forwarded-proto") or request.scope.get("scheme") or "http").split(",")[0].strip()
    host = headers.get("x-forwarded-host") or headers.get("host") or request.url.netloc
    prefix = f"/{app.route_prefix}" if app.route_prefix else ""
    return f"{scheme}://{host.split(',')[0].strip()}{prefix}"


async def publishing_events(app: App, handler: Awaitable[Response]) -> Response:
    """Await a handler that changes the store, then have the events of what changed published.

    The client never waits for them: they go out in the publisher's next batch (a timer,
    DICOMWEB_EVENTS_BATCH_MS), or with no batching once the response is sent (a background task of
    the response, which runs in the Functions worker's web server as in the dev host). Publishing
    never raises, and the change feed keeps what it could not publish for the timer function.
    """
    try:
        response = await handler
    except BaseException:
        await run_in_threadpool(app.publisher.publish_soon)  # a change may precede the error
        raise
    if app.publisher.batching:
        app.publisher.publish_soon()  # only starts the window's timer
    else:
        response.background = BackgroundTask(app.publisher.publish_soon)
    return response


def app_for(request: Request) -> App:
    return get_app()


def uids(request: Request, *names: str) -> list[str | None]:
    """Path UIDs, validated: a malformed UID is 400, never a lookup."""
    labels = {"study": "Study Instance UID", "series": "Series Instance UID", "instance": "SOP Instance UID"}
    values: list[str | None] = []
    for name in names:
        raw = request.path_params.get(name)
        values.append(None if raw is None else require_uid(raw, f"{labels[name]} in the URL"))
    return values


def negotiate_request(request: Request, offers: Sequence[Offer]) -> Negotiated:
    # No query string (a STOW, most retrieves): no `accept` parameter, and no parse of one.
    accept_query = request.query_params.get("accept") if request.scope.get("query_string") else None
    return negotiate(request.headers.get("accept"), tuple(offers), accept_query=accept_query)


def json_response(
    body: Any, status: int = 200, warnings: Iterable[str] = (), media_type: str = DICOM_JSON
) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    response = Response(data, status_code=status, media_type=media_type)
    add_warnings(response, warnings)
    return response


def add_warnings(response: Response, texts: Iterable[str]) -> None:
    for text in texts:
        clean = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
        response.headers.append("Warning", f'299 dicomweb "{clean}"')

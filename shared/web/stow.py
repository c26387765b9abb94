"""STOW-RS over HTTP: the request body is streamed through the multipart reader, part by part.

Each part is spooled (in memory up to a limit, then on disk) and stored in a worker thread while
the next part is received; a part's spool is gone once it is stored, so memory stays at about two
parts whatever the size of the request.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Coroutine
from typing import Any, BinaryIO

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared.bootstrap import App
from shared.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from shared.core.media import MediaType, parse_media_type
from shared.core.model import FailureReason, StoreOutcome, StoreStatus
from shared.core.multipart import MultipartReader, PartData, PartEnd, PartStart, boundary_of
from shared.core.stow_response import build_store_response
from shared.web.common import (
    JSON_OFFERS,
    app_for,
    base_url,
    guarded,
    json_response,
    negotiate_request,
    publishing_events,
    uids,
)

DICOM = "application/dicom"
_MAX_CONTENT_TYPE = 4096  # a real one is under 200 characters (Azure's host caps all headers at 32 kB)


class _Limits:
    def __init__(self, app: App) -> None:
        self.request = app.settings.max_request_bytes
        self.instance = app.settings.max_instance_bytes
        self.parts = app.settings.max_parts
        self.received = 0

    def count(self, n: int) -> None:
        self.received += n
        if self.received > self.request:
            raise PayloadTooLarge(f"the request is larger than the limit of {self.request} bytes")


def _content_type(request: Request) -> MediaType:
    raw = request.headers.get("content-type")
    if not raw:
        raise UnsupportedMediaType('Content-Type is required: multipart/related; type="application/dicom"')
    if len(raw) > _MAX_CONTENT_TYPE:
        raise BadRequest(f"Content-Type is longer than {_MAX_CONTENT_TYPE} characters")
    try:
        return parse_media_type(raw)
    except BadRequest as exc:
        raise UnsupportedMediaType(f"Content-Type is not a valid media type: {exc.message}") from None


class _Spool:
    """One part's bytes: kept as the chunks received (no copy per write) up to a limit, then in a
    temporary file. `file()` hands them over as one seekable file (a memory spool is joined once)."""

    def __init__(self, memory_limit: int) -> None:
        self._limit = memory_limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._file: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        if self._file is None:
            self._chunks.append(data)
            self._size += len(data)
            if self._size <= self._limit:
                return
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            data, self._chunks = b"".join(self._chunks), []
        self._file.write(data)

    def file(self) -> BinaryIO:
        if self._file is None:
            joined, self._chunks = b"".join(self._chunks), []
            return io.BytesIO(joined)
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        self._chunks = []
        if self._file is not None:
            self._file.close()


def _spool(app: App) -> _Spool:
    return _Spool(app.settings.spool_memory_bytes)


async def _store(app: App, spool: _Spool, size: int, study: str | None) -> StoreOutcome:
    def store() -> StoreOutcome:
        return app.service.store.store_instance(spool.file(), size, expected_study=study)

    try:
        return await run_in_threadpool(store)
    finally:
        spool.close()


async def _store_single(request: Request, app: App, limits: _Limits, study: str | None) -> list[StoreOutcome]:
    spool = _spool(app)
    size = 0
    async for chunk in request.stream():
        limits.count(len(chunk))
        size += len(chunk)
        if size > limits.instance:
            spool.close()
            raise PayloadTooLarge(f"an instance is larger than the limit of {limits.instance} bytes")
        spool.write(chunk)
    if size == 0:
        spool.close()
        raise BadRequest("the request body is empty")
    return [await _store(app, spool, size, study)]


async def _store_multipart(
    request: Request, app: App, limits: _Limits, media: MediaType, study: str | None
) -> list[StoreOutcome]:
    declared = (media.param("type") or "").lower()
    if declared and declared != DICOM:
        raise UnsupportedMediaType(
            f"multipart/related parts of type {declared!r} are not supported; use {DICOM}"
        )
    reader = MultipartReader(boundary_of(media))
    stored = _Pipeline()
    spool: _Spool | None = None
    refused: StoreOutcome | None = None  # the part being read is over a limit: its data is skipped
    size = 0
    part_type = ""
    try:
        async for received in request.stream():
            # Bytes up to the request limit are still read, so parts that end before it are stored.
            allowed = max(0, limits.request - limits.received)
            chunk = received[:allowed]
            over = len(received) > allowed
            limits.received += len(chunk)
            for event in reader.feed(chunk):
                if isinstance(event, PartStart):
                    part_type = (
                        (event.header("content-type") or declared or DICOM).split(";")[0].strip().lower()
                    )
                    size, refused = 0, None
                    if stored.count >= limits.parts:
                        refused = _over_limit(f"the request has more than {limits.parts} parts")
                    else:
                        spool = _spool(app)
                elif isinstance(event, PartData):
                    size += len(event.data)
                    if spool is not None and size > limits.instance:
                        spool.close()
                        spool = None
                        refused = _over_limit(
                            f"the instance is larger than the limit of {limits.instance} bytes"
                        )
                    if spool is not None:
                        spool.write(event.data)
                elif isinstance(event, PartEnd):
                    if refused is not None:
                        await stored.add_outcome(refused)
                    elif spool is not None:
                        current, spool = spool, None
                        await stored.add(_part(app, current, size, part_type, study), current)
            if over:
                raise _Truncated(
                    await stored.outcomes(), f"the request is larger than the limit of {limits.request} bytes"
                )
        reader.close()
    finally:
        if spool is not None:
            spool.close()
        await stored.settle()  # whatever happened, a store under way finishes (and is reported)
    outcomes = await stored.outcomes()
    if not outcomes:
        raise BadRequest("the multipart request holds no parts")
    return outcomes


class _Pipeline:
    """The parts of one request, stored in order, one at a time, while the next part is received.

    A part's store runs in a worker thread; the request body goes on streaming into the next
    part's spool meanwhile, and that part waits for the previous store before its own starts. At
    most one part is being stored and one being received: memory stays at two parts.
    """

    def __init__(self) -> None:
        self._done: list[StoreOutcome] = []
        self._running: asyncio.Task[StoreOutcome] | None = None

    @property
    def count(self) -> int:
        return len(self._done) + (self._running is not None)

    async def add(self, store: Coroutine[Any, Any, StoreOutcome], spool: _Spool) -> None:
        """Start storing a part (its spool is closed by `store`) once the previous store is done."""
        try:
            await self.settle()
        except BaseException:
            store.close()  # never started: its own cleanup will not run
            spool.close()
            raise
        self._running = asyncio.ensure_future(store)

    async def add_outcome(self, outcome: StoreOutcome) -> None:
        await self.settle()
        self._done.append(outcome)

    async def settle(self) -> None:
        """Wait for the store under way. If the request is cancelled meanwhile, the store (in its
        thread) still finishes, and is waited for, before the cancellation goes on."""
        running = self._running
        if running is None:
            return
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            if not running.done():
                await asyncio.wait([running])
            raise
        finally:
            if running.done():
                self._running = None
                if not running.cancelled() and running.exception() is None:
                    self._done.append(running.result())

    async def outcomes(self) -> list[StoreOutcome]:
        await self.settle()
        return self._done


class _Truncated(Exception):
    """The request went over its size limit while streaming: what was stored so far is reported."""

    def __init__(self, outcomes: list[StoreOutcome], message: str) -> None:
        super().__init__(message)
        self.outcomes = outcomes
        self.message = message


def _over_limit(message: str) -> StoreOutcome:
    return StoreOutcome(StoreStatus.FAILED, reason=FailureReason.OUT_OF_RESOURCES, message=message)


async def _part(app: App, spool: _Spool, size: int, part_type: str, study: str | None) -> StoreOutcome:
    if part_type != DICOM:
        spool.close()
        return StoreOutcome(
            StoreStatus.FAILED,
            reason=FailureReason.CANNOT_UNDERSTAND,
            message=f"a part of type {part_type or 'unknown'!r} is not supported; use {DICOM}",
        )
    if size == 0:
        spool.close()
        return StoreOutcome(
            StoreStatus.FAILED, reason=FailureReason.CANNOT_UNDERSTAND, message="the part is empty"
        )
    return await _store(app, spool, size, study)


@guarded
async def store_instances(request: Request) -> Response:
    """STOW-RS: POST /studies and POST /studies/{study}."""
    app = app_for(request)
    return await publishing_events(app, _store_instances(request, app))


async def _store_instances(request: Request, app: App) -> Response:
    (study,) = uids(request, "study")
    negotiate_request(request, JSON_OFFERS)
    media = _content_type(request)
    limits = _Limits(app)
    declared_length = request.headers.get("content-length")
    if declared_length and declared_length.isdigit() and int(declared_length) > limits.request:
        raise PayloadTooLarge(f"the request is larger than the limit of {limits.request} bytes")
    if media.type == DICOM:
        outcomes = await _store_single(request, app, limits, study)
    elif media.type == "multipart/related":
        try:
            outcomes = await _store_multipart(request, app, limits, media, study)
        except _Truncated as truncated:
            # 413, and the store response says which parts were stored before the limit was hit.
            result = build_store_response(base_url(request, app), truncated.outcomes, study)
            return json_response(result.body, 413, (*result.warnings, truncated.message))
    else:
        raise UnsupportedMediaType(f'{media.type} is not supported; use multipart/related; type="{DICOM}"')
    result = build_store_response(base_url(request, app), outcomes, study)
    return json_response(result.body, result.status, result.warnings)

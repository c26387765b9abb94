"""STOW-RS over HTTP: the request body is streamed through the multipart reader, part by part.

Each part is spooled (in memory up to a limit, then on disk) and stored in a worker thread while
the next parts are received, in batches (see `_Pipeline`); a part's spool is gone once it is
stored, so memory stays bounded whatever the size of the request.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from typing import BinaryIO

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
    stored = _Pipeline(app, study)
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
                    if refused is None and spool is not None:
                        refused = _refused_part(part_type, size)
                    current, spool = spool, None
                    if refused is not None:
                        if current is not None:
                            current.close()
                        await stored.add_outcome(refused)
                    elif current is not None:
                        await stored.add(current, size)
            if over:
                raise _Truncated(
                    await stored.outcomes(), f"the request is larger than the limit of {limits.request} bytes"
                )
        reader.close()
    except asyncio.CancelledError:
        stored.stop()  # the client is gone: what is being stored finishes, nothing more starts
        raise
    finally:
        if spool is not None:
            spool.close()
        await stored.drain()  # whatever happened, the parts received are stored before the answer
    outcomes = await stored.outcomes()
    if not outcomes:
        raise BadRequest("the multipart request holds no parts")
    return outcomes


_Item = tuple[_Spool, int] | StoreOutcome  # a part to store (its spool and size), or its outcome already


class _Pipeline:
    """The parts of one request, stored in order while the next ones are received.

    A batch of parts is stored in a worker thread (`InstanceStore.store_instances`: one index
    transaction begins them all, one commits them all) while the request body goes on streaming.
    The parts received meanwhile wait, and go together as the next batch as soon as the store is
    free; past `store_batch_parts` parts or `store_batch_bytes` bytes waiting, receiving waits
    for the store. So a fast client's small instances are stored many at a time, and memory stays
    at about two batches whatever the size of the request.
    """

    def __init__(self, app: App, study: str | None) -> None:
        self._store = app.service.store
        self._study = study
        self._max_parts = app.settings.store_batch_parts
        self._max_bytes = app.settings.store_batch_bytes
        self._done: list[StoreOutcome] = []
        self._waiting: list[_Item] = []
        self._waiting_bytes = 0
        self._running: asyncio.Task[list[StoreOutcome]] | None = None
        self._failure: BaseException | None = None
        self._stopped = False  # cancelled: what is being stored finishes, nothing more starts
        self.count = 0

    async def add(self, spool: _Spool, size: int) -> None:
        """Store a received part (its spool is closed once stored)."""
        self._waiting.append((spool, size))
        self._waiting_bytes += size
        await self._queued()

    async def add_outcome(self, outcome: StoreOutcome) -> None:
        """A part refused before its store: its outcome keeps its place among the others."""
        self._waiting.append(outcome)
        await self._queued()

    async def _queued(self) -> None:
        self.count += 1
        if self._running is None and self._failure is None:
            self._start()
        elif len(self._waiting) >= self._max_parts or self._waiting_bytes >= self._max_bytes:
            await self._wait()  # when the batch under way ends, the waiting parts start as the next
        if self._failure is not None:
            raise self._failure

    def _start(self) -> None:
        batch, self._waiting, self._waiting_bytes = self._waiting, [], 0
        running = asyncio.ensure_future(self._store_batch(batch))
        running.add_done_callback(self._finished)
        self._running = running

    def _finished(self, task: asyncio.Task[list[StoreOutcome]]) -> None:
        # Runs in the event loop as the batch ends, before anything waiting for it resumes.
        self._running = None
        if task.cancelled():
            self._failure = asyncio.CancelledError()
        elif (error := task.exception()) is not None:
            self._failure = error
        else:
            self._done.extend(task.result())
            if self._waiting and not self._stopped:
                self._start()

    def stop(self) -> None:
        """The request is cancelled: parts waiting are not stored (drain closes their spools)."""
        self._stopped = True

    async def _wait(self) -> None:
        """Wait for the batch under way. If the request is cancelled meanwhile, that store (in
        its thread) still finishes, and is waited for, before the cancellation goes on."""
        running = self._running
        if running is None:
            return
        try:
            await asyncio.wait([running])
        except asyncio.CancelledError:
            self.stop()
            await asyncio.wait([running])
            raise

    async def _store_batch(self, batch: list[_Item]) -> list[StoreOutcome]:
        parts = [item for item in batch if not isinstance(item, StoreOutcome)]
        try:
            if parts:
                stored = await run_in_threadpool(
                    lambda: self._store.store_instances(
                        [(spool.file(), size) for spool, size in parts], expected_study=self._study
                    )
                )
            else:
                stored = []
        finally:
            for spool, _size in parts:
                spool.close()
        outcomes = iter(stored)
        return [item if isinstance(item, StoreOutcome) else next(outcomes) for item in batch]

    async def drain(self) -> None:
        """Store the parts waiting (unless cancelled) and wait until no store runs; the spools of
        parts that will not be stored are closed."""
        try:
            if self._running is None and self._waiting and self._failure is None and not self._stopped:
                self._start()
            while self._running is not None:
                await self._wait()
        finally:
            for item in self._waiting:
                if not isinstance(item, StoreOutcome):
                    item[0].close()
            self._waiting, self._waiting_bytes = [], 0

    async def outcomes(self) -> list[StoreOutcome]:
        """Every part's outcome, in order, once all are stored."""
        await self.drain()
        if self._failure is not None:
            raise self._failure
        return self._done


class _Truncated(Exception):
    """The request went over its size limit while streaming: what was stored so far is reported."""

    def __init__(self, outcomes: list[StoreOutcome], message: str) -> None:
        super().__init__(message)
        self.outcomes = outcomes
        self.message = message


def _over_limit(message: str) -> StoreOutcome:
    return StoreOutcome(StoreStatus.FAILED, reason=FailureReason.OUT_OF_RESOURCES, message=message)


def _refused_part(part_type: str, size: int) -> StoreOutcome | None:
    if part_type != DICOM:
        return StoreOutcome(
            StoreStatus.FAILED,
            reason=FailureReason.CANNOT_UNDERSTAND,
            message=f"a part of type {part_type or 'unknown'!r} is not supported; use {DICOM}",
        )
    if size == 0:
        return StoreOutcome(
            StoreStatus.FAILED, reason=FailureReason.CANNOT_UNDERSTAND, message="the part is empty"
        )
    return None


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

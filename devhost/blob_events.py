"""Blob-created events, raised locally: poll a container and call the blob-trigger function.

In Azure, Event Grid tells the Functions host that a blob was created; neither the filesystem
store nor Azurite raise such events, so the dev host lists the container every
DEVHOST_BLOB_POLL_SECONDS (default 1.0) and calls the function once for each blob name it has
not dispatched yet, with an `azure.functions.blob.InputStream` named `<container>/<blob name>`,
as the host does. Listed names are complete: the filesystem store writes to `.tmp-*` files,
which it does not list, and links them into place; Azure lists committed blobs only. A file
copied into the inbox folder by hand is not: on the filesystem a file modified less than
`settle_seconds` ago (DEVHOST_BLOB_SETTLE_SECONDS, default 0.5) waits for a later poll.

Delivery is at least once, like the host's: a function that raises is called again for the same
blob while the blob is still there, after a back-off that doubles, at most DEVHOST_BLOB_MAX_TRIES
times (default 5) in all; then the dev host gives up on that name (the host would put it on its
poison queue). A name that disappears is forgotten, so a file dropped again under the same name
is dispatched again. Names listed when the dev host starts are dispatched too: they were dropped
while nothing was watching.

Blob names can carry patient names: they are logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.functions.blob import InputStream
from starlette.concurrency import run_in_threadpool

from devhost.bindings import BlobPath
from devhost.discovery import FunctionSpec
from devhost.invoke import call_function

__all__ = ["DEFAULT_MAX_TRIES", "DEFAULT_POLL_SECONDS", "DEFAULT_SETTLE_SECONDS", "BlobWatcher", "blob_uri"]

logger = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 1.0
DEFAULT_MAX_TRIES = 5
DEFAULT_SETTLE_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 60.0


@dataclass(slots=True)
class _Failure:
    tries: int
    retry_at: float  # on the watcher's monotonic clock


def blob_uri(store: Any, container: str, name: str) -> str | None:
    """A URI for the blob: its URL on Azure, a file: URI on the filesystem store, else None.

    The BlobStore port has no such method (the app never needs one), so this looks at the two
    adapters the dev host knows.
    """
    client = getattr(store, "_container", None)
    url = getattr(client, "url", None)
    if isinstance(url, str):
        from urllib.parse import quote

        return f"{url.rstrip('/')}/{quote(name)}"
    root = getattr(store, "_root", None)
    if root is not None and hasattr(root, "joinpath"):
        return str(root.joinpath(name).resolve().as_uri())
    return None


class BlobWatcher:
    """Dispatches the blobs of one container that match one blob-trigger function's path."""

    def __init__(
        self,
        spec: FunctionSpec,
        store: Any,  # a shared.core.ports.BlobStore over `path.container`
        path: BlobPath,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_tries: int = DEFAULT_MAX_TRIES,
        retry_seconds: float | None = None,
        max_concurrency: int = 4,
        settle_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_tries < 1:
            raise ValueError("max_tries must be at least 1")
        self.spec = spec
        self.store = store
        self.path = path
        self.poll_seconds = poll_seconds
        self.max_tries = max_tries
        self.retry_seconds = poll_seconds if retry_seconds is None else retry_seconds
        self.settle_seconds = settle_seconds
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrency)
        self._done: set[str] = set()  # dispatched (or given up on) and still listed
        self._failures: dict[str, _Failure] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listing_failed = False

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start polling on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"blob:{self.spec.name}")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop polling; let dispatches in flight finish for up to `grace_seconds`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        running = list(self._inflight.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_seconds)
            for leftover in pending:
                leftover.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.poll_seconds)

    # --- one pass --------------------------------------------------------------------------
    async def poll(self) -> int:
        """List the container once and start a dispatch for each due name; returns how many."""
        try:
            listed = await run_in_threadpool(self._list)
        except Exception as error:  # storage down: say so once, keep polling
            if not self._listing_failed:
                logger.warning(
                    "blob trigger %s: cannot list container: %s", self.spec.name, type(error).__name__
                )
                self._listing_failed = True
            return 0
        if self._listing_failed:
            logger.info("blob trigger %s: listing works again", self.spec.name)
            self._listing_failed = False
        self._forget_missing(listed)
        now = self._clock()
        started = 0
        for name in listed:
            if name in self._done or name in self._inflight:
                continue
            failure = self._failures.get(name)
            if failure is not None and now < failure.retry_at:
                continue
            self._inflight[name] = asyncio.get_running_loop().create_task(self._dispatch(name))
            started += 1
        return started

    async def idle(self) -> None:
        """Wait until no dispatch is in flight (tests)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    def _list(self) -> list[str]:
        names = [name for name in self.store.list(self.path.prefix) if self.path.match(name) is not None]
        root = getattr(self.store, "_root", None)  # the filesystem store: skip files still changing
        if self.settle_seconds > 0 and isinstance(root, Path):
            settled_before = time.time() - self.settle_seconds
            names = [name for name in names if _modified(root / name) <= settled_before]
        return sorted(names)

    def _forget_missing(self, listed: Iterable[str]) -> None:
        present = set(listed)
        self._done &= present
        for name in [name for name in self._failures if name not in present]:
            del self._failures[name]

    # --- one blob --------------------------------------------------------------------------
    async def _dispatch(self, name: str) -> None:
        try:
            async with self._slots:
                await self._deliver(name)
        finally:
            self._inflight.pop(name, None)

    async def _deliver(self, name: str) -> None:
        began = time.perf_counter()
        logger.debug("blob trigger %s: dispatching %r", self.spec.name, name)
        try:
            stream = await run_in_threadpool(self._read, name)
        except Exception as error:
            if _is_not_found(error):  # removed since it was listed: nothing to do
                self._failures.pop(name, None)
                return
            self._failed(name, error, began)
            return
        try:
            await call_function(self.spec, stream)
        except Exception as error:
            self._failed(name, error, began)
            return
        self._failures.pop(name, None)
        self._done.add(name)
        logger.info("blob %s ok %.1fms", self.spec.name, _ms(began))

    def _read(self, name: str) -> InputStream:
        with self.store.open(name) as reader:
            data = reader.read()
        return InputStream(
            name=f"{self.path.container}/{name}",
            data=data,
            length=len(data),
            uri=blob_uri(self.store, self.path.container, name),
            blob_properties={"Length": len(data)},
            metadata={},
        )

    def _failed(self, name: str, error: Exception, began: float) -> None:
        previous = self._failures.get(name)
        tries = 1 if previous is None else previous.tries + 1
        if tries >= self.max_tries:
            self._failures.pop(name, None)
            self._done.add(name)  # not again while the blob stays
            logger.error(
                "blob %s failed (try %d of %d, giving up) %.1fms: %s",
                self.spec.name,
                tries,
                self.max_tries,
                _ms(began),
                type(error).__name__,
                exc_info=error,
            )
            return
        delay = min(self.retry_seconds * 2 ** (tries - 1), MAX_BACKOFF_SECONDS)
        self._failures[name] = _Failure(tries, self._clock() + delay)
        logger.warning(
            "blob %s failed (try %d of %d, again in %.1fs) %.1fms: %s",
            self.spec.name,
            tries,
            self.max_tries,
            delay,
            _ms(began),
            type(error).__name__,
            exc_info=error,
        )


def _is_not_found(error: Exception) -> bool:
    from shared.core.errors import NotFound

    return isinstance(error, (NotFound, FileNotFoundError))


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # gone since it was listed


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000

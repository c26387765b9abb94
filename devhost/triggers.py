"""The non-HTTP triggers of a local run: blob-created events, Service Bus messages, timers.

`TriggerHost` reads the app's functions once (`discover`), and with the server's lifespan starts:
- a `BlobWatcher` per blob-trigger function, over the container its `path` names (the app's
  inbox store when it is the inbox container, else another container of the same backend);
- a `ServiceBusDispatcher` for the Service Bus queue triggers of the app's events queue, fed by
  the in-process event queue (with DICOMWEB_EVENTS=servicebus, Service Bus delivers in Azure
  and nothing consumes locally);
- a `TimerScheduler` per timer-trigger function.
A trigger whose `%SETTING%` does not resolve, or whose path or schedule is malformed, is logged
as an error and not started, as the Functions host refuses to index it; the others run.

Environment: DEVHOST_TRIGGERS (on/off, default on), DEVHOST_BLOB_POLL_SECONDS (1.0),
DEVHOST_BLOB_MAX_TRIES (5), DEVHOST_BLOB_SETTLE_SECONDS (0.5: a file
copied into the filesystem inbox by hand waits until it has not changed for that long),
WEBSITE_TIME_ZONE (timers; UTC when unset).

With several worker processes (DEVHOST_WORKERS), every worker dispatches the Service Bus messages
of its own in-process queue, and one worker only, the holder of an exclusive lock on a file
(`primary_lock`), runs the blob watchers and the timers: two watchers would ingest a file twice
and two timers would double every run. The others try the lock again every blob poll interval: a
worker that stops (it dies, or a restart replaces it) releases the lock with its process, and one
of them takes its triggers over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from starlette.concurrency import run_in_threadpool

try:  # POSIX; the dev host runs one worker process where it is missing (Windows)
    import fcntl
except ImportError:  # pragma: no cover - not on the CI's Linux
    fcntl = None  # type: ignore[assignment]

from devhost.bindings import BlobPath, resolve_settings
from devhost.blob_events import DEFAULT_MAX_TRIES, DEFAULT_POLL_SECONDS, DEFAULT_SETTLE_SECONDS, BlobWatcher
from devhost.discovery import BLOB_TRIGGER, SERVICE_BUS_TRIGGER, TIMER_TRIGGER, FunctionSpec, functions_of
from devhost.ncrontab import CronSchedule
from devhost.queue_events import ServiceBusDispatcher
from devhost.timers import TimerScheduler, timer_zone

__all__ = ["TriggerHost", "TriggerSettings", "triggers_enabled"]

logger = logging.getLogger(__name__)

_OFF = {"0", "off", "false", "no"}


def triggers_enabled(environ: Mapping[str, str]) -> bool:
    """False when DEVHOST_TRIGGERS is off (a run that serves HTTP only)."""
    return environ.get("DEVHOST_TRIGGERS", "on").strip().lower() not in _OFF


def _number(environ: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, got {raw}")
    return value


@dataclass(frozen=True, slots=True)
class TriggerSettings:
    blob_poll_seconds: float = DEFAULT_POLL_SECONDS
    blob_max_tries: int = DEFAULT_MAX_TRIES
    blob_settle_seconds: float = DEFAULT_SETTLE_SECONDS
    time_zone: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TriggerSettings:
        return cls(
            blob_poll_seconds=_number(environ, "DEVHOST_BLOB_POLL_SECONDS", DEFAULT_POLL_SECONDS, 0.01),
            blob_max_tries=int(_number(environ, "DEVHOST_BLOB_MAX_TRIES", DEFAULT_MAX_TRIES, 1)),
            blob_settle_seconds=_number(environ, "DEVHOST_BLOB_SETTLE_SECONDS", DEFAULT_SETTLE_SECONDS, 0),
            time_zone=environ.get("WEBSITE_TIME_ZONE") or None,
        )


def _shared_app() -> Any:
    from shared.bootstrap import get_app

    return get_app()


def _other_container(app: Any, container: str) -> Any:
    from shared.bootstrap import build_container

    return build_container(app.settings, container)


class TriggerHost:
    """Starts and stops every non-HTTP trigger of one app."""

    def __init__(
        self,
        specs: Sequence[FunctionSpec],
        *,
        environ: Mapping[str, str] | None = None,
        settings: TriggerSettings | None = None,
        app_provider: Callable[[], Any] = _shared_app,
        container_store: Callable[[Any, str], Any] = _other_container,
        primary_lock: Path | None = None,
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.settings = settings or TriggerSettings.from_env(self.environ)
        self.blob_specs = functions_of(tuple(specs), BLOB_TRIGGER)
        self.servicebus_specs = functions_of(tuple(specs), SERVICE_BUS_TRIGGER)
        self.timer_specs = functions_of(tuple(specs), TIMER_TRIGGER)
        self._app_provider = app_provider
        self._container_store = container_store
        self.watchers: list[BlobWatcher] = []
        self.dispatchers: list[ServiceBusDispatcher] = []
        self.timers: list[TimerScheduler] = []
        self._primary_lock = primary_lock
        self._lock_file: IO[bytes] | None = None
        self._claiming: asyncio.Task[None] | None = None
        self.primary = primary_lock is None

    def _claim_primary(self) -> bool:
        """True when this process runs the blob watchers and timers (see the module docstring)."""
        if self._primary_lock is None or fcntl is None:
            return True
        handle = open(self._primary_lock, "ab")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    async def start(self) -> None:
        self.primary = self._claim_primary()
        if self.primary:
            self._start_timers()
        if (self.blob_specs and self.primary) or self.servicebus_specs:
            app = await self._app()
            if app is not None:
                if self.primary:
                    await self._start_blobs(app)
                self._start_servicebus(app)
        if not self.primary:
            logger.info("blob and timer triggers run in another worker process")
            self._claiming = asyncio.create_task(self._claim_later())
        logger.info(
            "triggers: %d blob watcher(s), %d Service Bus dispatcher(s), %d timer(s)",
            len(self.watchers),
            len(self.dispatchers),
            len(self.timers),
        )

    async def _app(self) -> Any:
        try:
            return await run_in_threadpool(self._app_provider)
        except Exception:
            logger.exception("cannot build the app's stores: blob and Service Bus triggers are not served")
            return None

    async def _claim_later(self) -> None:
        """A worker without the lock tries again every poll interval: the holder may stop (a
        restart replaces workers one by one) and somebody must take its triggers over."""
        while not self._claim_primary():
            await asyncio.sleep(self.settings.blob_poll_seconds)
        self.primary = True
        logger.info("this worker process now runs the blob and timer triggers")
        self._start_timers()
        if self.blob_specs:
            app = await self._app()
            if app is not None:
                await self._start_blobs(app)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        if self._claiming is not None:
            self._claiming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._claiming
            self._claiming = None
        for watcher in self.watchers:
            await watcher.stop(grace_seconds)
        for dispatcher in self.dispatchers:
            await dispatcher.stop(grace_seconds)
        for timer in self.timers:
            await timer.stop(grace_seconds)
        self.watchers, self.dispatchers, self.timers = [], [], []
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    # --- blobs -----------------------------------------------------------------------------
    async def _start_blobs(self, app: Any) -> None:
        for spec in self.blob_specs:
            try:
                path = BlobPath.parse(resolve_settings(str(spec.trigger.get("path", "")), self.environ))
                store = await run_in_threadpool(self._store_for, app, path.container)
            except (LookupError, ValueError) as error:
                logger.error("blob trigger %s is not served: %s", spec.name, error)
                continue
            watcher = BlobWatcher(
                spec,
                store,
                path,
                poll_seconds=self.settings.blob_poll_seconds,
                max_tries=self.settings.blob_max_tries,
                settle_seconds=self.settings.blob_settle_seconds,
            )
            watcher.start()
            self.watchers.append(watcher)
            logger.info("blob trigger %s watches container %s", spec.name, path.container)

    def _store_for(self, app: Any, container: str) -> Any:
        settings = app.settings
        if container == settings.inbox_container:
            return app.inbox
        if container == settings.failed_container:
            return app.failed
        return self._container_store(app, container)

    # --- Service Bus -----------------------------------------------------------------------
    def _start_servicebus(self, app: Any) -> None:
        if not self.servicebus_specs:
            return
        if app.settings.events != "inprocess" or not hasattr(app.events, "subscribe"):
            logger.info(
                "DICOMWEB_EVENTS=%s: Service Bus delivers to %d function(s) in Azure; locally nothing"
                " consumes the queue",
                app.settings.events,
                len(self.servicebus_specs),
            )
            return
        events_queue = app.settings.events_queue
        listening: list[FunctionSpec] = []
        for spec in self.servicebus_specs:
            queue_name = spec.trigger.get("queueName")
            if queue_name is None:
                logger.warning("Service Bus trigger %s listens on a topic: not served locally", spec.name)
                continue
            try:
                resolved = resolve_settings(str(queue_name), self.environ)
            except LookupError as error:
                logger.error("Service Bus trigger %s is not served: %s", spec.name, error)
                continue
            if resolved != events_queue:
                logger.warning(
                    "Service Bus trigger %s listens on queue %s; the app publishes to %s: not served",
                    spec.name,
                    resolved,
                    events_queue,
                )
                continue
            listening.append(spec)
        if listening:
            dispatcher = ServiceBusDispatcher(listening, app.events, events_queue)
            dispatcher.start()
            self.dispatchers.append(dispatcher)

    # --- timers ----------------------------------------------------------------------------
    def _start_timers(self) -> None:
        if not self.timer_specs:
            return
        try:
            zone = timer_zone(self.settings.time_zone)
        except (LookupError, ValueError) as error:  # ZoneInfoNotFoundError is a KeyError
            logger.error(
                "WEBSITE_TIME_ZONE %r is not a known zone: timers are not served (%s)",
                self.settings.time_zone,
                error,
            )
            return
        for spec in self.timer_specs:
            try:
                schedule = CronSchedule.parse(
                    resolve_settings(str(spec.trigger.get("schedule", "")), self.environ)
                )
            except (LookupError, ValueError) as error:
                logger.error("timer trigger %s is not served: %s", spec.name, error)
                continue
            timer = TimerScheduler(
                spec, schedule, run_on_startup=bool(spec.trigger.get("runOnStartup")), zone=zone
            )
            timer.start()
            self.timers.append(timer)

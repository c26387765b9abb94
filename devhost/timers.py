"""Timer-triggered functions, run on their NCRONTAB schedule by the dev host.

Each timer function gets one task that sleeps until the next occurrence of its schedule and
calls it with an `azure.functions.TimerRequest` (async functions on the loop, sync ones in a
thread). Runs of one function never overlap: occurrences missed while it ran are skipped, and
the next run is flagged `past_due` when it starts more than a second late (the loop was busy or
the machine slept). `run_on_startup=True` runs it once when the dev host starts. Errors are
logged and the schedule goes on. Times are wall-clock time in WEBSITE_TIME_ZONE when set (an
IANA name), else UTC, as on Azure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from azure.functions.timer import TimerRequest

from devhost.discovery import FunctionSpec
from devhost.invoke import call_function
from devhost.ncrontab import CronSchedule

__all__ = ["PAST_DUE_SECONDS", "TimerScheduler", "timer_zone"]

logger = logging.getLogger(__name__)

PAST_DUE_SECONDS = 1.0
_MAX_SLEEP = 30.0  # re-read the wall clock at least this often (it may jump)


def timer_zone(name: str | None) -> tzinfo:
    """The zone of WEBSITE_TIME_ZONE (IANA name), UTC when unset."""
    if not name:
        return UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _iso(moment: datetime | None) -> str:
    return "0001-01-01T00:00:00" if moment is None else moment.isoformat()


class TimerScheduler:
    """Runs one timer-triggered function on its schedule."""

    def __init__(
        self,
        spec: FunctionSpec,
        schedule: CronSchedule,
        *,
        run_on_startup: bool = False,
        zone: tzinfo = UTC,
        clock: Callable[[tzinfo], datetime] = datetime.now,
    ) -> None:
        self.spec = spec
        self.schedule = schedule
        self.run_on_startup = run_on_startup
        self.zone = zone
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last: datetime | None = None
        self._stopping = asyncio.Event()
        self._running = False
        self.runs = 0

    def now(self) -> datetime:
        return self._clock(self.zone)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"timer:{self.spec.name}")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop scheduling; a run in progress may finish within `grace_seconds`."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await asyncio.wait([task], timeout=grace_seconds if self._running else 0)
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        if self.run_on_startup:
            await self._fire_guarded(self.now())
        while not self._stopping.is_set():
            due = self.schedule.next_after(self.now())
            if due is None:
                logger.warning("timer %s: schedule %r never fires", self.spec.name, self.schedule.text)
                return
            while (remaining := (due - self.now()).total_seconds()) > 0:
                if await self._stopped_within(min(remaining, _MAX_SLEEP)):
                    return
            await self._fire_guarded(due)

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _fire_guarded(self, due: datetime) -> None:
        self._running = True
        try:
            await self.fire(due)
        finally:
            self._running = False

    async def fire(self, due: datetime) -> bool:
        """Run the function once for the occurrence `due`; False when it raised."""
        started = self.now()
        past_due = (started - due).total_seconds() > PAST_DUE_SECONDS
        upcoming = self.schedule.next_after(started)
        request = TimerRequest(
            past_due=past_due,
            schedule_status={"Last": _iso(self._last), "Next": _iso(upcoming), "LastUpdated": _iso(started)},
            schedule={"AdjustForDST": True},
        )
        began = time.perf_counter()
        self._last = started
        self.runs += 1
        try:
            await call_function(self.spec, request)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.warning(
                "timer %s failed%s %.1fms: %s",
                self.spec.name,
                " (past due)" if past_due else "",
                _ms(began),
                type(error).__name__,
                exc_info=error,
            )
            return False
        logger.info("timer %s ok%s %.1fms", self.spec.name, " (past due)" if past_due else "", _ms(began))
        return True


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000

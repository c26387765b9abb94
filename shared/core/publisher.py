"""Publishing the change feed as events: in short batches after changes, on a timer, and once a
study is quiet.

The change feed in the index is the source of truth. An entry stays "unpublished" until the event
queue has accepted its event, so a crash or a queue outage between the commit and the publish loses
nothing: the next batch, or the timer function, publishes it. Delivery is therefore
at least once; event ids are stable, so a republished event is a duplicate that Service Bus duplicate
detection and consumers drop.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from shared.core.events import event_for, study_stable_event
from shared.core.ports import EventQueue, MetadataIndex

log = logging.getLogger(__name__)


class ChangePublisher:
    """Publishes unpublished change feed entries in sequence order, and study-stable events.

    Thread-safe: one publisher per process runs at a time (a lock). Publishers in other processes
    may publish the same entries again; that only makes duplicates, which carry the same id.
    """

    def __init__(
        self,
        index: MetadataIndex,
        queue: EventQueue,
        *,
        partition: str = "default",
        batch_seconds: float = 0.0,
    ) -> None:
        self._index = index
        self._queue = queue
        self._partition = partition
        self._batch_seconds = batch_seconds
        self._timer: threading.Timer | None = None  # the open batch window (guarded by _state)
        self._lock = threading.Lock()
        self._state = threading.Lock()  # guards the two flags below and the window timer above
        self._requested = False
        self._running = False

    def publish_pending(self, limit: int = 500) -> int:
        """Publish every unpublished entry, oldest first, `limit` at a time; return how many.

        If the queue raises, the error propagates and that batch stays unpublished (the change feed
        still holds it); batches accepted before it stay published."""
        published = 0
        with self._lock:
            while True:
                entries = self._index.unpublished_changes(limit)
                if not entries:
                    return published
                self._queue.publish([event_for(entry) for entry in entries])
                self._index.mark_published([entry.sequence for entry in entries])
                published += len(entries)
                if len(entries) < limit:  # that was all (a later change has its own call)
                    return published

    def publish_after_change(self) -> None:
        """Publish now (blob-drop ingestion, and each batch of publish_soon): never raise, never pile up.

        Calls that arrive while another thread is publishing only ask it to go round once more (so
        an entry committed meanwhile is not left for the timer), instead of queuing on the lock. A
        failure is logged by its type only; the timer publishes what is left."""
        with self._state:
            self._requested = True
            if self._running:
                return
            self._running = True
        try:
            while True:
                with self._state:
                    if not self._requested:
                        return
                    self._requested = False
                self.publish_pending()
        except Exception as exc:
            log.warning("events not published now (the timer retries): %s", type(exc).__name__)
        finally:
            with self._state:
                self._running = False

    @property
    def batching(self) -> bool:
        """True when publish_soon only schedules (it never blocks then)."""
        return self._batch_seconds > 0

    def publish_soon(self) -> None:
        """What the web layer calls after a STOW or delete: publish within `batch_seconds`, in one
        batch with every other change of that window, without blocking the caller.

        One timer per window, whatever the number of requests in it: a STOW of one instance per
        request would otherwise cost an index read, a queue send and an index write each. With no
        window (0), it publishes now, as publish_after_change. A change committed before this call
        is in the batch; a process that dies before the timer fires leaves it to the timer function.
        """
        if self._batch_seconds <= 0:
            self.publish_after_change()
            return
        with self._state:
            if self._timer is not None:
                return
            self._timer = threading.Timer(self._batch_seconds, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        """Publish the batch of the open window now (its timer does; so can a test or a shutdown)."""
        with self._state:
            timer, self._timer = self._timer, None  # a change committed from here on opens the next
        if timer is not None:
            timer.cancel()  # no effect when it is the timer calling
        self.publish_after_change()

    def announce_stable_studies(
        self, quiet_seconds: float, now: datetime | None = None, limit: int = 100
    ) -> int:
        """Publish one `dicom.study.stable` event for each study whose last change is older than the
        quiet period and that was not announced since that change; return how many.

        Debounced by the index: a study stored as 500 instances is announced once, after its last
        instance; a later change makes it eligible again, after its own quiet period. The event's
        time is that of the study's last change, so a republished event is identical. If the queue
        raises, the error propagates and the studies not yet announced are announced next time."""
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=quiet_seconds)
        announced = 0
        with self._lock:
            while True:
                quiet = self._index.quiet_studies(cutoff, limit)
                if not quiet:
                    return announced
                events = [
                    study_stable_event(self._partition, study, sequence, time)
                    for study, sequence, time in quiet
                ]
                self._queue.publish(events)
                for study, sequence, _time in quiet:
                    self._index.mark_study_stable(study, sequence)
                announced += len(quiet)

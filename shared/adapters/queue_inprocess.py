"""EventQueue in the process: what the dev host and the tests use instead of Service Bus.

It behaves as a Service Bus queue does for its consumers: messages are delivered in order to the
subscribed handler (the dev host subscribes the Service Bus-triggered functions), a handler that
raises gets the message again (delivery count + 1, with a short back-off), and after
`max_delivery_count` failed deliveries the message is dead-lettered. A message id seen recently is
dropped (duplicate detection), so republishing a change's event is harmless.

While nobody subscribes (a host with no queue-triggered function, a test that only publishes), at
most `max_unsubscribed` messages are held: past that the OLDEST are dropped, with one warning. That
loses nothing durable - the change feed in the index keeps every change, and GET /changefeed
serves it - and it keeps the newest, which describe the current state of a study (and the latest
study-stable events). A dropped message's id is forgotten, so publishing it again is accepted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shared.core.events import DicomEvent

log = logging.getLogger(__name__)

_DUPLICATE_WINDOW = 100_000
MAX_UNSUBSCRIBED = 10_000


@dataclass(frozen=True, slots=True)
class InProcessMessage:
    message_id: str
    body: bytes
    subject: str
    content_type: str = "application/json"
    application_properties: dict[str, Any] = field(default_factory=dict)
    delivery_count: int = 0
    enqueued_time: datetime = field(default_factory=lambda: datetime.now(UTC))


Handler = Callable[[InProcessMessage], None]


class InProcessEventQueue:
    def __init__(
        self,
        max_delivery_count: int = 10,
        retry_delay: float = 0.05,
        max_unsubscribed: int = MAX_UNSUBSCRIBED,
    ) -> None:
        self.max_delivery_count = max_delivery_count
        self._retry_delay = retry_delay
        self._max_unsubscribed = max_unsubscribed
        self.dropped = 0  # messages dropped while nobody subscribed
        self._warned = False
        self._pending: deque[InProcessMessage] = deque()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dead: list[InProcessMessage] = []
        self._handler: Handler | None = None
        self._busy = False
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None

    # --- the EventQueue port -----------------------------------------------------------------
    def publish(self, events: Sequence[DicomEvent]) -> None:
        with self._cond:
            for event in events:
                if event.id in self._seen:
                    continue
                self._seen[event.id] = None
                if len(self._seen) > _DUPLICATE_WINDOW:
                    self._seen.popitem(last=False)
                self._pending.append(
                    InProcessMessage(
                        message_id=event.id,
                        body=event.body(),
                        subject=event.type,
                        application_properties={"type": event.type, "studyInstanceUid": event.study},
                    )
                )
            if self._handler is None:
                self._bound()
            self._cond.notify_all()

    def _bound(self) -> None:
        """Nobody subscribes: drop the oldest messages over the bound (the change feed keeps them)."""
        excess = len(self._pending) - self._max_unsubscribed
        if excess <= 0:
            return
        for _ in range(excess):
            dropped = self._pending.popleft()
            self._seen.pop(dropped.message_id, None)
        self.dropped += excess
        if not self._warned:
            self._warned = True
            log.warning(
                "no subscriber: the in-process queue keeps only the newest %d events (the change feed"
                " keeps every change)",
                self._max_unsubscribed,
            )

    # --- the consumer side (dev host, tests) -------------------------------------------------
    def subscribe(self, handler: Handler) -> None:
        """Deliver every message, in order, to `handler` on a background thread."""
        with self._cond:
            self._handler = handler
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="inprocess-queue", daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def dead_letters(self) -> list[InProcessMessage]:
        with self._cond:
            return list(self._dead)

    def pending(self) -> list[InProcessMessage]:
        with self._cond:
            return list(self._pending)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every message was delivered or dead-lettered; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending or self._handler is None:
                    self._cond.wait()
                message = replace(self._pending.popleft(), delivery_count=0)
                self._busy = True
                handler = self._handler
            try:
                self._deliver(handler, message)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, handler: Handler, message: InProcessMessage) -> None:
        for attempt in range(1, self.max_delivery_count + 1):
            delivered = replace(message, delivery_count=attempt)
            try:
                handler(delivered)
                return
            except Exception as exc:
                log.warning(
                    "event handler failed (delivery %d of %d): %s",
                    attempt,
                    self.max_delivery_count,
                    type(exc).__name__,
                )
                time.sleep(self._retry_delay * attempt)
        log.error("event dead-lettered after %d deliveries", self.max_delivery_count)
        with self._cond:
            self._dead.append(replace(message, delivery_count=self.max_delivery_count))

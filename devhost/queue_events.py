"""Service Bus-triggered functions, fed from the app's in-process event queue.

With DICOMWEB_EVENTS=inprocess (the default) the app publishes its events to an
`InProcessEventQueue`; the dev host subscribes to it and hands each message, as an
`azure.functions.ServiceBusMessage`, to every Service Bus queue trigger whose `queue_name`
(after `%SETTING%` resolution) is the app's events queue. A function that raises makes the
handler raise, so the queue redelivers the message (delivery count + 1) and dead-letters it after
its maximum; on redelivery, functions that already completed that message are not called again
(in Azure each would be its own consumer). Two functions on one queue would compete for messages
in Azure; here each gets every message (a warning says so at start).

Sync functions run on the queue's delivery thread, async ones on the server's event loop.
Message bodies are never logged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.functions.meta import Datum
from azure.functions.servicebus import ServiceBusMessage

from devhost.discovery import FunctionSpec

__all__ = ["ServiceBusDispatcher", "to_servicebus_message"]

logger = logging.getLogger(__name__)

LOCK_DURATION = timedelta(minutes=1)  # Service Bus' default lock duration


def to_servicebus_message(message: Any, sequence_number: int) -> ServiceBusMessage:
    """The `ServiceBusMessage` the worker would build for an `InProcessMessage`."""
    enqueued = message.enqueued_time
    if enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=UTC)
    properties = dict(message.application_properties)
    lock_token = str(uuid.uuid4())
    locked_until = datetime.now(UTC) + LOCK_DURATION
    metadata = {  # as the worker passes it: typed values, JSON for the property maps
        "MessageId": Datum(message.message_id, "string"),
        "ContentType": Datum(message.content_type, "string"),
        "DeliveryCount": Datum(message.delivery_count, "int"),
        "EnqueuedTimeUtc": Datum(enqueued.isoformat(), "string"),
        "Label": Datum(message.subject, "string"),
        "Subject": Datum(message.subject, "string"),
        "LockToken": Datum(lock_token, "string"),
        "SequenceNumber": Datum(sequence_number, "int"),
        "ApplicationProperties": Datum(json.dumps(properties, default=str), "json"),
        "UserProperties": Datum(json.dumps(properties, default=str), "json"),
    }
    return ServiceBusMessage(
        body=message.body,
        trigger_metadata=metadata,
        application_properties=properties,
        content_type=message.content_type,
        delivery_count=message.delivery_count,
        enqueued_time_utc=enqueued,
        label=message.subject,
        subject=message.subject,
        lock_token=lock_token,
        locked_until=locked_until,
        message_id=message.message_id,
        sequence_number=sequence_number,
        user_properties=properties,
    )


class ServiceBusDispatcher:
    """Subscribes to an in-process queue and delivers its messages to Service Bus functions."""

    def __init__(self, specs: Sequence[FunctionSpec], queue: Any, queue_name: str) -> None:
        self.specs = tuple(specs)
        self.queue = queue  # shared.adapters.queue_inprocess.InProcessEventQueue
        self.queue_name = queue_name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sequence = itertools.count(1)
        self._completed: dict[str, set[str]] = {}  # message id -> functions done with it
        self._busy = 0
        self._idle = threading.Condition()
        self._subscribed = False

    def start(self) -> None:
        """Subscribe (call on the event loop that async functions should run on)."""
        self._loop = asyncio.get_running_loop()
        if len(self.specs) > 1:
            logger.warning(
                "%d functions listen on queue %s: in Azure they compete for its messages, here each"
                " gets every message",
                len(self.specs),
                self.queue_name,
            )
        self.queue.subscribe(self.handle)
        self._subscribed = True

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop taking messages (they stay queued) and wait for a delivery in flight."""
        if self._subscribed:
            # The in-process queue holds its messages while it has no handler.
            self.queue.subscribe(None)
            self._subscribed = False
        await asyncio.to_thread(self._wait_idle, grace_seconds)

    def _wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def handle(self, message: Any) -> None:
        """The queue's handler: call every function not yet done with it; raise on a failure."""
        with self._idle:
            self._busy += 1
        try:
            self._handle(message)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _handle(self, message: Any) -> None:
        done = self._completed.setdefault(message.message_id, set())
        failure: Exception | None = None
        for spec in self.specs:
            if spec.name in done:
                continue
            began = time.perf_counter()
            try:
                self._call(spec, to_servicebus_message(message, next(self._sequence)))
            except Exception as error:
                failure = failure or error
                logger.warning(
                    "servicebus %s failed (delivery %d) %.1fms: %s",
                    spec.name,
                    message.delivery_count,
                    _ms(began),
                    type(error).__name__,
                    exc_info=error,
                )
                continue
            done.add(spec.name)
            logger.info(
                "servicebus %s ok (delivery %d) %.1fms", spec.name, message.delivery_count, _ms(began)
            )
        max_deliveries = int(getattr(self.queue, "max_delivery_count", 0) or 0)
        if failure is None or message.delivery_count >= max_deliveries:
            self._completed.pop(message.message_id, None)  # done, or about to be dead-lettered
        if failure is not None:
            raise failure

    def _call(self, spec: FunctionSpec, argument: ServiceBusMessage) -> None:
        kwargs = {spec.arg_name: argument}
        if not spec.is_async:
            spec.user_function(**kwargs)
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the dev host's event loop is not running")
        asyncio.run_coroutine_threadsafe(spec.user_function(**kwargs), loop).result()


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000

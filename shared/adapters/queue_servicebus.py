"""EventQueue on an Azure Service Bus queue (azure-servicebus, sync API).

Each event is one message: body = the event's JSON, `message_id` = the event's stable id (so the
queue's duplicate detection drops a republished event), `subject` = the event type, content type
`application/json`, and application properties `type`, `studyInstanceUid`, `sequence` and
`partition` for filters and subscriptions. Events are sent in order, in as few batches as fit.

Nothing connects at construction: the client and its sender are created on the first publish and
reused (one lock: a sender is not thread-safe). The SDK's retry policy (retry_total, back-off) runs
first; what still fails becomes the core's `Unavailable`, and the sender is rebuilt next time. The
change feed keeps the events of a failed publish, so nothing is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from azure.core.exceptions import AzureError
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import MessageSizeExceededError

from shared.core.errors import Unavailable
from shared.core.events import DicomEvent

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
# The SDK's retry policy: up to 3 retries, exponential back-off from 0.8 s, at most 30 s apart.
RETRY: dict[str, Any] = {
    "retry_total": 3,
    "retry_backoff_factor": 0.8,
    "retry_backoff_max": 30,
    "retry_mode": "exponential",
}
SEND_TIMEOUT = 30.0  # seconds for one send, retries included


class Sender(Protocol):
    """What the adapter uses of `azure.servicebus.ServiceBusSender` (tests pass a fake)."""

    def create_message_batch(self) -> ServiceBusMessageBatch: ...

    def send_messages(self, message: ServiceBusMessageBatch, *, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


SenderFactory = Callable[[], Sender]


class _ClientSender:
    """A queue sender that also closes the client it came from."""

    def __init__(self, client: ServiceBusClient, queue: str) -> None:
        self._client = client
        self._sender = client.get_queue_sender(queue)

    def create_message_batch(self) -> ServiceBusMessageBatch:
        return self._sender.create_message_batch()

    def send_messages(self, message: ServiceBusMessageBatch, *, timeout: float | None = None) -> None:
        self._sender.send_messages(message, timeout=timeout)

    def close(self) -> None:
        try:
            self._sender.close()
        finally:
            self._client.close()


def _namespace(value: str) -> str:
    """`myns.servicebus.windows.net` from that, `sb://myns...`, or `https://myns.../`."""
    host = value.strip()
    for scheme in ("sb://", "https://", "amqps://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme) :]
    return host.rstrip("/")


def to_message(event: DicomEvent) -> ServiceBusMessage:
    return ServiceBusMessage(
        event.body(),
        message_id=event.id,
        subject=event.type,
        content_type=CONTENT_TYPE,
        application_properties={
            "type": event.type,
            "studyInstanceUid": event.study,
            "sequence": event.sequence,
            "partition": event.partition,
        },
    )


class ServiceBusEventQueue:
    def __init__(self, sender_factory: SenderFactory, *, send_timeout: float | None = SEND_TIMEOUT) -> None:
        self._factory = sender_factory
        self._send_timeout = send_timeout
        self._sender: Sender | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_connection_string(cls, connection_string: str, queue: str) -> ServiceBusEventQueue:
        def connect() -> Sender:
            return _ClientSender(ServiceBusClient.from_connection_string(connection_string, **RETRY), queue)

        return cls(connect)

    @classmethod
    def from_namespace(
        cls, fully_qualified_namespace: str, queue: str, credential: Any = None
    ) -> ServiceBusEventQueue:
        """Managed identity (or any token credential); None means `DefaultAzureCredential`."""
        namespace = _namespace(fully_qualified_namespace)

        def connect() -> Sender:
            token = credential
            if token is None:
                from azure.identity import DefaultAzureCredential

                token = DefaultAzureCredential()
            return _ClientSender(ServiceBusClient(namespace, token, **RETRY), queue)

        return cls(connect)

    # --- the EventQueue port -----------------------------------------------------------------
    def publish(self, events: Sequence[DicomEvent]) -> None:
        if not events:
            return
        messages = [to_message(event) for event in events]
        with self._lock:
            try:
                self._send(messages)
            except AzureError as exc:  # ServiceBusError and credential errors alike
                log.warning("Service Bus publish failed: %s", type(exc).__name__)
                self._drop_sender()
                raise Unavailable("the event queue is unavailable; retry later") from exc

    def _send(self, messages: list[ServiceBusMessage]) -> None:
        if self._sender is None:
            self._sender = self._factory()
        sender = self._sender
        batch = sender.create_message_batch()
        for message in messages:
            try:
                batch.add_message(message)
            except MessageSizeExceededError:
                if len(batch) == 0:
                    raise  # one event larger than a batch can hold: nothing to split
                sender.send_messages(batch, timeout=self._send_timeout)
                batch = sender.create_message_batch()
                batch.add_message(message)
        if len(batch):
            sender.send_messages(batch, timeout=self._send_timeout)

    def _drop_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                sender.close()
            except Exception as exc:  # closing a broken link may fail too; it is gone either way
                log.debug("closing the Service Bus sender failed: %s", type(exc).__name__)

    def close(self) -> None:
        with self._lock:
            self._drop_sender()

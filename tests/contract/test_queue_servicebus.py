"""ServiceBusEventQueue, tested at its boundary with the azure-servicebus SDK.

No Service Bus can run here: there is no Service Bus emulator without Docker, and Docker does not
run on this machine. So these tests inject a fake sender (the adapter's `sender_factory` seam) that
hands out REAL `ServiceBusMessageBatch` objects, and check the exact `ServiceBusMessage` objects the
adapter produces (body, message id, subject, content type, application properties), how they are
batched and ordered, and that real SDK exceptions become the core's `Unavailable`. One test drives
the real SDK client against an unresolvable host, to check that construction connects to nothing
and that the SDK's own connection error is translated.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.exceptions import AzureError, ClientAuthenticationError
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch, ServiceBusSender
from azure.servicebus import exceptions as sb

from shared.adapters import queue_servicebus
from shared.adapters.queue_servicebus import ServiceBusEventQueue
from shared.core.errors import Unavailable
from shared.core.events import INSTANCE_CREATED, INSTANCE_DELETED, STUDY_STABLE, DicomEvent

STUDY = "1.2.826.0.1.3680043.10.999.7"


def _event(n: int, type_: str = INSTANCE_CREATED) -> DicomEvent:
    return DicomEvent(
        id=f"default:{n}",
        type=type_,
        sequence=n,
        partition="default",
        study=STUDY,
        series=STUDY + ".1",
        instance=f"{STUDY}.1.{n}",
        time=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
    )


class RecordingBatch(ServiceBusMessageBatch):
    """The SDK's own batch (its size accounting and MessageSizeExceededError), remembering what it holds."""

    def __init__(self, max_size_in_bytes: int) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.held: list[ServiceBusMessage] = []

    def add_message(self, message: Any) -> None:
        super().add_message(message)
        self.held.append(message)


class FakeSender:
    """Stands in for ServiceBusSender: records every batch sent; can fail as the SDK does."""

    def __init__(self, max_batch_bytes: int = 256 * 1024) -> None:
        self.max_batch_bytes = max_batch_bytes
        self.sent: list[list[ServiceBusMessage]] = []
        self.timeouts: list[float | None] = []
        self.fail_on_send: list[BaseException] = []  # raised by the next sends, one each
        self.fail_on_create: list[BaseException] = []
        self.closed = False
        self._inside = threading.Lock()

    def create_message_batch(self) -> ServiceBusMessageBatch:
        if self.fail_on_create:
            raise self.fail_on_create.pop(0)
        return RecordingBatch(self.max_batch_bytes)

    def send_messages(self, message: ServiceBusMessageBatch, *, timeout: float | None = None) -> None:
        assert self._inside.acquire(blocking=False), "the sender was used by two threads at once"
        try:
            time.sleep(0.001)
            if self.fail_on_send:
                raise self.fail_on_send.pop(0)
            assert isinstance(message, RecordingBatch)
            assert len(message) > 0, "an empty batch was sent"
            self.sent.append(list(message.held))
            self.timeouts.append(timeout)
        finally:
            self._inside.release()

    def close(self) -> None:
        self.closed = True

    def messages(self) -> list[ServiceBusMessage]:
        return [m for batch in self.sent for m in batch]


class Factory:
    """The `sender_factory` seam: counts the senders it makes."""

    def __init__(self, make: Callable[[], FakeSender] = FakeSender) -> None:
        self.make = make
        self.senders: list[FakeSender] = []
        self.fail: list[BaseException] = []

    def __call__(self) -> FakeSender:
        if self.fail:
            raise self.fail.pop(0)
        self.senders.append(self.make())
        return self.senders[-1]


def _body(message: ServiceBusMessage) -> bytes:
    return b"".join(message.body)


# --- the messages ------------------------------------------------------------------------------
@pytest.mark.parametrize("type_", [INSTANCE_CREATED, INSTANCE_DELETED, STUDY_STABLE])
def test_each_event_is_one_message_with_its_id_type_body_and_properties(type_: str) -> None:
    factory = Factory()
    event = _event(42, type_)
    ServiceBusEventQueue(factory).publish([event])
    (message,) = factory.senders[0].messages()
    assert isinstance(message, ServiceBusMessage)
    assert message.message_id == "default:42"
    assert message.subject == type_
    assert message.content_type == "application/json"
    assert _body(message) == event.body()
    assert DicomEvent.from_json(json.loads(_body(message))) == event
    assert message.application_properties == {
        "type": type_,
        "studyInstanceUid": STUDY,
        "sequence": 42,
        "partition": "default",
    }
    assert message.session_id is None  # no sessions: one plain queue
    assert message.scheduled_enqueue_time_utc is None


def test_a_republished_event_has_the_same_message_id_and_body() -> None:
    factory = Factory()
    queue = ServiceBusEventQueue(factory)
    queue.publish([_event(1)])
    queue.publish([_event(1)])
    first, second = factory.senders[0].messages()
    assert first.message_id == second.message_id  # Service Bus duplicate detection drops the second
    assert _body(first) == _body(second)


def test_events_that_fit_go_in_one_batch_in_order() -> None:
    factory = Factory()
    ServiceBusEventQueue(factory).publish([_event(n) for n in range(1, 21)])
    sender = factory.senders[0]
    assert len(sender.sent) == 1
    assert [m.message_id for m in sender.messages()] == [f"default:{n}" for n in range(1, 21)]
    assert sender.timeouts == [queue_servicebus.SEND_TIMEOUT]


def test_a_full_batch_is_sent_and_a_new_one_started_keeping_the_order() -> None:
    one = len(_body(queue_servicebus.to_message(_event(1))))
    factory = Factory(lambda: FakeSender(max_batch_bytes=one * 3 + 200))  # room for about three
    ServiceBusEventQueue(factory).publish([_event(n) for n in range(1, 11)])
    sender = factory.senders[0]
    assert len(sender.sent) > 2
    assert all(batch for batch in sender.sent)
    assert [m.message_id for m in sender.messages()] == [f"default:{n}" for n in range(1, 11)]


def test_publishing_nothing_creates_no_sender() -> None:
    factory = Factory()
    ServiceBusEventQueue(factory).publish([])
    assert factory.senders == []


# --- the sender's life -------------------------------------------------------------------------
def test_nothing_is_created_before_the_first_publish_and_the_sender_is_reused() -> None:
    factory = Factory()
    queue = ServiceBusEventQueue(factory)
    assert factory.senders == []
    queue.publish([_event(1)])
    queue.publish([_event(2)])
    assert len(factory.senders) == 1
    assert [m.message_id for m in factory.senders[0].messages()] == ["default:1", "default:2"]


def test_concurrent_publishes_use_the_sender_one_at_a_time() -> None:
    factory = Factory()
    queue = ServiceBusEventQueue(factory)
    errors: list[BaseException] = []

    def publish(start: int) -> None:
        try:
            for n in range(start, start + 10):
                queue.publish([_event(n)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(k * 100,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(factory.senders) == 1
    assert len(factory.senders[0].messages()) == 60


def test_close_closes_the_sender_and_a_later_publish_opens_a_new_one() -> None:
    factory = Factory()
    queue = ServiceBusEventQueue(factory)
    queue.close()  # nothing open yet: fine
    queue.publish([_event(1)])
    queue.close()
    assert factory.senders[0].closed
    queue.publish([_event(2)])
    assert len(factory.senders) == 2 and not factory.senders[1].closed


# --- errors ------------------------------------------------------------------------------------
SDK_ERRORS = [
    sb.ServiceBusConnectionError(message="connection lost"),
    sb.ServiceBusCommunicationError(message="cannot reach the namespace"),
    sb.OperationTimeoutError(message="send timed out"),
    sb.ServiceBusServerBusyError(message="server busy"),
    sb.ServiceBusQuotaExceededError(message="queue full"),
    sb.ServiceBusAuthenticationError(message="bad key"),
    sb.ServiceBusAuthorizationError(message="no Send right"),
    sb.MessagingEntityNotFoundError(message="no such queue"),
    sb.MessagingEntityDisabledError(message="queue disabled"),
    sb.ServiceBusError(message="anything else"),
    ClientAuthenticationError(message="managed identity unavailable"),
]
SDK_IDS = [type(e).__name__ for e in SDK_ERRORS]


@pytest.mark.parametrize("error", SDK_ERRORS, ids=SDK_IDS)
def test_an_sdk_error_on_send_is_unavailable_and_the_sender_is_rebuilt(error: AzureError) -> None:
    factory = Factory()
    queue = ServiceBusEventQueue(factory)
    queue.publish([_event(1)])
    factory.senders[0].fail_on_send.append(error)
    with pytest.raises(Unavailable) as raised:
        queue.publish([_event(2)])
    assert raised.value.status == 503
    assert raised.value.__cause__ is error
    assert "retry" in raised.value.message and str(error) not in raised.value.message
    assert factory.senders[0].closed
    queue.publish([_event(2)])  # the next publish opens a new sender
    assert len(factory.senders) == 2
    assert [m.message_id for m in factory.senders[1].messages()] == ["default:2"]


@pytest.mark.parametrize("where", ["factory", "create_message_batch"])
def test_an_sdk_error_while_connecting_is_unavailable(where: str) -> None:
    error = sb.ServiceBusConnectionError(message="cannot open the link")
    factory = Factory()
    if where == "factory":
        factory.fail.append(error)
    else:
        factory.make = lambda: _failing_create(error)
    with pytest.raises(Unavailable):
        ServiceBusEventQueue(factory).publish([_event(1)])


def _failing_create(error: BaseException) -> FakeSender:
    sender = FakeSender()
    sender.fail_on_create.append(error)
    return sender


def test_an_event_larger_than_a_whole_batch_is_unavailable_not_lost_silently() -> None:
    factory = Factory(lambda: FakeSender(max_batch_bytes=64))
    with pytest.raises(Unavailable) as raised:
        ServiceBusEventQueue(factory).publish([_event(1)])
    assert isinstance(raised.value.__cause__, sb.MessageSizeExceededError)
    assert factory.senders[0].sent == []


def test_a_failure_in_a_later_batch_raises_after_the_earlier_ones_were_sent() -> None:
    """The publisher then leaves the whole call unpublished and sends it again; the batches that
    went through carry the same message ids, which duplicate detection drops."""
    one = len(_body(queue_servicebus.to_message(_event(1))))
    factory = Factory(lambda: FakeSender(max_batch_bytes=one * 2 + 200))
    queue = ServiceBusEventQueue(factory)
    queue.publish([_event(0)])
    sender = factory.senders[0]
    sender.sent.clear()
    original = sender.send_messages
    calls = {"n": 0}

    def second_fails(message: ServiceBusMessageBatch, *, timeout: float | None = None) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise sb.OperationTimeoutError(message="timed out")
        original(message, timeout=timeout)

    sender.send_messages = second_fails  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        queue.publish([_event(n) for n in range(1, 7)])
    sent_ids = [m.message_id for m in sender.messages()]
    assert sent_ids and sent_ids == [f"default:{n}" for n in range(1, len(sent_ids) + 1)]


def test_an_error_that_is_not_the_sdks_propagates_unchanged() -> None:
    factory = Factory()
    queue = ServiceBusEventQueue(factory)
    queue.publish([_event(1)])
    factory.senders[0].fail_on_send.append(TypeError("a bug"))
    with pytest.raises(TypeError):
        queue.publish([_event(2)])


# --- the real SDK at the edge ------------------------------------------------------------------
def test_the_fake_has_the_real_senders_methods() -> None:
    for name in ("create_message_batch", "send_messages", "close"):
        assert callable(getattr(ServiceBusSender, name))
    assert "timeout" in inspect.signature(ServiceBusSender.send_messages).parameters


def test_the_real_client_connects_nowhere_until_publish_and_its_error_is_translated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue_servicebus, "RETRY", {"retry_total": 0})  # fail at once, no back-off
    queue = ServiceBusEventQueue.from_connection_string(
        "Endpoint=sb://nowhere.invalid/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0", "dicom-events"
    )
    with pytest.raises(Unavailable) as raised:
        queue.publish([_event(1)])
    assert isinstance(raised.value.__cause__, sb.ServiceBusError)
    queue.close()


class _Recorded:
    """Stands in for ServiceBusClient: records how it was made and which queue sender was asked for."""

    made: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    queues: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _Recorded.made.append((args, kwargs))

    @classmethod
    def from_connection_string(cls, *args: Any, **kwargs: Any) -> _Recorded:
        return cls(*args, **kwargs)

    def get_queue_sender(self, queue: str) -> FakeSender:
        _Recorded.queues.append(queue)
        return FakeSender()

    def close(self) -> None:
        pass


@pytest.fixture
def recorded_client(monkeypatch: pytest.MonkeyPatch) -> type[_Recorded]:
    _Recorded.made, _Recorded.queues = [], []
    monkeypatch.setattr(queue_servicebus, "ServiceBusClient", _Recorded)
    return _Recorded


def test_from_connection_string_builds_the_client_on_first_publish_with_the_retry_policy(
    recorded_client: type[_Recorded],
) -> None:
    queue = ServiceBusEventQueue.from_connection_string(
        "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b", "q1"
    )
    assert recorded_client.made == []
    queue.publish([_event(1)])
    ((args, kwargs),) = recorded_client.made
    assert args == ("Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b",)
    assert kwargs == queue_servicebus.RETRY
    assert recorded_client.queues == ["q1"]


@pytest.mark.parametrize(
    "given",
    [
        "myns.servicebus.windows.net",
        "sb://myns.servicebus.windows.net/",
        "https://myns.servicebus.windows.net",
    ],
)
def test_from_namespace_uses_the_given_credential_and_the_bare_namespace(
    recorded_client: type[_Recorded], given: str
) -> None:
    credential = object()
    queue = ServiceBusEventQueue.from_namespace(given, "q1", credential=credential)
    assert recorded_client.made == []
    queue.publish([_event(1)])
    ((args, kwargs),) = recorded_client.made
    assert args == ("myns.servicebus.windows.net", credential)
    assert kwargs == queue_servicebus.RETRY
    assert recorded_client.queues == ["q1"]


def test_from_namespace_without_a_credential_uses_default_azure_credential(
    recorded_client: type[_Recorded], monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.identity

    class Default:
        pass

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", Default)
    queue = ServiceBusEventQueue.from_namespace("myns.servicebus.windows.net", "q1")
    assert recorded_client.made == []  # not even the credential before the first publish
    queue.publish([_event(1)])
    ((args, _kwargs),) = recorded_client.made
    assert isinstance(args[1], Default)

"""The in-process event queue behaves for its consumer as a Service Bus queue does: ordered delivery,
redelivery of a failed message, dead-letter after N deliveries, duplicate detection by message id,
and it holds a bounded number of messages while nobody subscribes."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime

import pytest

from shared.adapters.queue_inprocess import InProcessEventQueue, InProcessMessage
from shared.core.events import INSTANCE_CREATED, INSTANCE_DELETED, DicomEvent

STUDY = "1.2.826.0.1.3680043.10.999.1"


def _event(n: int, type_: str = INSTANCE_CREATED) -> DicomEvent:
    return DicomEvent(
        id=f"default:{n}",
        type=type_,
        sequence=n,
        partition="default",
        study=STUDY,
        series=STUDY + ".1",
        instance=f"{STUDY}.1.{n}",
        time=datetime(2026, 1, 2, 3, 4, 5, n, tzinfo=UTC),
    )


def _queue(**kw: object) -> InProcessEventQueue:
    return InProcessEventQueue(retry_delay=0.001, **kw)  # type: ignore[arg-type]


class Recorder:
    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.fail = fail or {}  # message id -> how many deliveries fail
        self.calls: list[InProcessMessage] = []
        self.lock = threading.Lock()

    def __call__(self, message: InProcessMessage) -> None:
        with self.lock:
            self.calls.append(message)
            failures = self.fail.get(message.message_id, 0)
        if message.delivery_count <= failures:
            raise RuntimeError("handler failed")

    def ids(self) -> list[str]:
        return [m.message_id for m in self.calls]


def test_messages_are_delivered_in_publish_order() -> None:
    queue, handler = _queue(), Recorder()
    queue.publish([_event(n) for n in range(1, 11)])
    queue.subscribe(handler)
    queue.publish([_event(n) for n in range(11, 21)])
    assert queue.drain(5)
    assert handler.ids() == [f"default:{n}" for n in range(1, 21)]
    assert all(m.delivery_count == 1 for m in handler.calls)


def test_a_message_carries_the_event_as_service_bus_would() -> None:
    queue, handler = _queue(), Recorder()
    event = _event(7, INSTANCE_DELETED)
    queue.subscribe(handler)
    queue.publish([event])
    assert queue.drain(5)
    (message,) = handler.calls
    assert message.message_id == event.id
    assert message.subject == INSTANCE_DELETED
    assert message.content_type == "application/json"
    assert message.body == event.body()
    assert DicomEvent.from_json(json.loads(message.body)) == event
    assert message.application_properties["type"] == INSTANCE_DELETED
    assert message.application_properties["studyInstanceUid"] == STUDY


def test_a_failed_delivery_is_redelivered_before_the_next_message() -> None:
    queue, handler = _queue(max_delivery_count=5), Recorder(fail={"default:1": 2})
    queue.publish([_event(1), _event(2)])
    queue.subscribe(handler)
    assert queue.drain(5)
    assert [(m.message_id, m.delivery_count) for m in handler.calls] == [
        ("default:1", 1),
        ("default:1", 2),
        ("default:1", 3),
        ("default:2", 1),
    ]
    assert queue.dead_letters() == []


@pytest.mark.parametrize("max_deliveries", [1, 3], ids=lambda n: f"max={n}")
def test_a_message_that_always_fails_is_dead_lettered_after_max_deliveries(max_deliveries: int) -> None:
    queue = _queue(max_delivery_count=max_deliveries)
    handler = Recorder(fail={"default:1": 1000})
    queue.publish([_event(1), _event(2)])
    queue.subscribe(handler)
    assert queue.drain(5)
    assert handler.ids() == ["default:1"] * max_deliveries + ["default:2"]
    (dead,) = queue.dead_letters()
    assert dead.message_id == "default:1"
    assert dead.delivery_count == max_deliveries


def test_a_duplicate_message_id_is_dropped() -> None:
    queue, handler = _queue(), Recorder()
    queue.publish([_event(1), _event(1), _event(2)])
    queue.publish([_event(2), _event(1)])  # a republish, as after a crash before mark_published
    queue.subscribe(handler)
    assert queue.drain(5)
    assert handler.ids() == ["default:1", "default:2"]


def test_drain_waits_for_the_message_in_flight_and_times_out_while_it_runs() -> None:
    queue, release = _queue(), threading.Event()
    queue.subscribe(lambda message: release.wait(5) and None)
    queue.publish([_event(1)])
    assert queue.drain(0.05) is False
    release.set()
    assert queue.drain(5) is True
    assert queue.pending() == []


def test_drain_without_a_subscriber_times_out_while_messages_wait() -> None:
    queue = _queue()
    assert queue.drain(0.01) is True  # nothing published
    queue.publish([_event(1)])
    assert queue.drain(0.05) is False
    assert [m.message_id for m in queue.pending()] == ["default:1"]


def test_without_a_subscriber_only_the_newest_are_held_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = _queue(max_unsubscribed=5)
    with caplog.at_level(logging.WARNING, logger="shared.adapters.queue_inprocess"):
        queue.publish([_event(n) for n in range(1, 9)])
        queue.publish([_event(9)])
    assert [m.message_id for m in queue.pending()] == [f"default:{n}" for n in range(5, 10)]
    assert queue.dropped == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "change feed" in warnings[0].getMessage()


def test_a_dropped_message_can_be_published_again() -> None:
    queue = _queue(max_unsubscribed=2)
    queue.publish([_event(1), _event(2), _event(3)])
    queue.publish([_event(1)])  # no longer held, so not a duplicate
    assert [m.message_id for m in queue.pending()] == ["default:3", "default:1"]


def test_with_a_subscriber_nothing_is_dropped_however_many_wait() -> None:
    queue, release, handler = _queue(max_unsubscribed=2), threading.Event(), Recorder()

    def slow(message: InProcessMessage) -> None:
        release.wait(5)
        handler(message)

    queue.subscribe(slow)
    queue.publish([_event(n) for n in range(1, 11)])
    assert queue.dropped == 0
    release.set()
    assert queue.drain(5)
    assert handler.ids() == [f"default:{n}" for n in range(1, 11)]

"""ChangePublisher over a real SQLite index and the in-process queue: every change becomes one event,
in order; nothing is lost when the queue fails or the process dies between commit and publish; a
republish is harmless; a study is announced stable once per quiet period after its last change."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.routing import Route

from shared.adapters.index_sql import SqlMetadataIndex
from shared.adapters.index_sql_schema import make_engine
from shared.adapters.queue_inprocess import InProcessEventQueue, InProcessMessage
from shared.bootstrap import App, build
from shared.config import Settings
from shared.core.changefeed import ChangeFeedEntry
from shared.core.errors import Unavailable
from shared.core.events import (
    INSTANCE_CREATED,
    INSTANCE_DELETED,
    INSTANCE_REPLACED,
    STUDY_STABLE,
    DicomEvent,
)
from shared.core.model import InstanceRecord, InstanceUids
from shared.core.publisher import ChangePublisher
from shared.web import delete as web_delete
from shared.web import stow as web_stow
from tests.contract.records import make_record, new_version, uid


class Index:
    """Opens SqlMetadataIndex clients of one SQLite file (one per simulated process)."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path / 'index.sqlite3'}"
        self.engines: list[Engine] = []

    def connect(self) -> SqlMetadataIndex:
        self.engines.append(make_engine(self.url))
        return SqlMetadataIndex(self.url, engine=self.engines[-1])


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Index]:
    db = Index(tmp_path)
    yield db
    for engine in db.engines:
        engine.dispose()


@pytest.fixture
def index(db: Index) -> SqlMetadataIndex:
    return db.connect()


class Consumer:
    """A subscriber that records the events it receives."""

    def __init__(self, queue: InProcessEventQueue) -> None:
        self.queue = queue
        self.messages: list[InProcessMessage] = []
        queue.subscribe(self.messages.append)

    def events(self) -> list[DicomEvent]:
        assert self.queue.drain(5)
        return [DicomEvent.from_json(json.loads(m.body)) for m in self.messages]


class FlakyQueue:
    """An EventQueue that refuses the publish calls numbered in `fail` (Service Bus down), forwards others."""

    def __init__(self, inner: InProcessEventQueue, fail: set[int]) -> None:
        self.inner = inner
        self.fail = fail
        self.calls = 0

    def publish(self, events: Sequence[DicomEvent]) -> None:
        self.calls += 1
        if self.calls in self.fail:
            raise Unavailable("the event queue is unavailable")
        self.inner.publish(events)


def _queue() -> InProcessEventQueue:
    return InProcessEventQueue(retry_delay=0.001)


def _record(study: str) -> InstanceRecord:
    return make_record(InstanceUids(study, study + ".1", uid()), PatientName="Publish^Test")


def _store(index: SqlMetadataIndex, record: InstanceRecord, replace: bool = False) -> ChangeFeedEntry:
    index.commit_instance(record, index.begin_instance(record, replace=replace))
    latest = index.latest_change()
    assert latest is not None
    return latest


def test_every_create_replace_and_delete_is_one_event_in_order(index: SqlMetadataIndex) -> None:
    queue = _queue()
    consumer = Consumer(queue)
    publisher = ChangePublisher(index, queue)
    a, b = uid(), uid()
    first = _record(a)
    _store(index, first)
    assert publisher.publish_pending() == 1
    _store(index, dataclasses.replace(first, version=new_version()), replace=True)
    _store(index, _record(b))
    assert publisher.publish_pending() == 2
    index.delete(a)
    assert publisher.publish_pending() == 1
    assert publisher.publish_pending() == 0
    events = consumer.events()
    assert [(e.type, e.study) for e in events] == [
        (INSTANCE_CREATED, a),
        (INSTANCE_REPLACED, a),
        (INSTANCE_CREATED, b),
        (INSTANCE_DELETED, a),
    ]
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4
    assert [e.id for e in events] == [f"default:{s}" for s in sequences]
    assert all(e.instance == first.uids.instance for e in events if e.study == a)
    assert index.unpublished_changes(10) == []


@pytest.mark.parametrize("limit", [1, 2, 500], ids=lambda n: f"limit={n}")
def test_batches_follow_each_other_in_sequence_order(index: SqlMetadataIndex, limit: int) -> None:
    queue = _queue()
    consumer = Consumer(queue)
    study = uid()
    stored = [_store(index, _record(study)) for _ in range(5)]
    assert ChangePublisher(index, queue).publish_pending(limit=limit) == 5
    assert [e.sequence for e in consumer.events()] == [s.sequence for s in stored]


def test_a_crash_between_commit_and_publish_loses_no_event(db: Index) -> None:
    # The first process commits three changes and dies before it publishes any of them.
    dying = db.connect()
    stored = [_store(dying, _record(uid())) for _ in range(3)]
    # The next process (a new index client, a new queue) publishes them on its first call.
    queue = _queue()
    consumer = Consumer(queue)
    assert ChangePublisher(db.connect(), queue).publish_pending() == 3
    assert [e.sequence for e in consumer.events()] == [s.sequence for s in stored]


def test_a_queue_that_fails_after_commit_loses_nothing(index: SqlMetadataIndex) -> None:
    inner = _queue()
    consumer = Consumer(inner)
    publisher = ChangePublisher(index, FlakyQueue(inner, fail={1}))
    stored = [_store(index, _record(uid())) for _ in range(3)]
    with pytest.raises(Unavailable):
        publisher.publish_pending()
    assert [e.sequence for e in index.unpublished_changes(10)] == [s.sequence for s in stored]
    assert publisher.publish_pending() == 3  # the next call (or the timer) publishes them
    assert [e.sequence for e in consumer.events()] == [s.sequence for s in stored]


def test_a_failure_in_a_later_batch_keeps_the_earlier_batches_published(index: SqlMetadataIndex) -> None:
    inner = _queue()
    consumer = Consumer(inner)
    publisher = ChangePublisher(index, FlakyQueue(inner, fail={2}))  # the second batch is refused
    stored = [_store(index, _record(uid())) for _ in range(4)]
    with pytest.raises(Unavailable):
        publisher.publish_pending(limit=2)
    assert [e.sequence for e in index.unpublished_changes(10)] == [s.sequence for s in stored[2:]]
    assert publisher.publish_pending(limit=2) == 2
    assert [e.sequence for e in consumer.events()] == [s.sequence for s in stored]


class ForgetfulIndex:
    """The index of a process that dies after the queue accepted the events but before it marked them."""

    def __init__(self, inner: SqlMetadataIndex) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def mark_published(self, sequences: Sequence[int]) -> None:
        raise Unavailable("the index database is unavailable; retry later")


def test_republishing_is_harmless(index: SqlMetadataIndex) -> None:
    queue = _queue()
    consumer = Consumer(queue)
    stored = [_store(index, _record(uid())) for _ in range(3)]
    with pytest.raises(Unavailable):
        ChangePublisher(ForgetfulIndex(index), queue).publish_pending()  # type: ignore[arg-type]
    assert len(index.unpublished_changes(10)) == 3  # published, but not marked
    assert ChangePublisher(index, queue).publish_pending() == 3  # the same events again, same ids
    events = consumer.events()
    assert [e.sequence for e in events] == [s.sequence for s in stored]  # each delivered once


def test_publish_after_change_never_raises_and_logs_the_error_type_only(
    index: SqlMetadataIndex, caplog: pytest.LogCaptureFixture
) -> None:
    inner = _queue()
    consumer = Consumer(inner)
    publisher = ChangePublisher(index, FlakyQueue(inner, fail={1}))
    record = make_record(InstanceUids(uid(), uid(), uid()), PatientName="Secret^Name", PatientID="PID-42")
    _store(index, record)
    with caplog.at_level(logging.DEBUG, logger="shared.core.publisher"):
        publisher.publish_after_change()
    assert [r.getMessage() for r in caplog.records] == [
        "events not published now (the timer retries): Unavailable"
    ]
    publisher.publish_after_change()  # the queue is back
    assert [e.instance for e in consumer.events()] == [record.uids.instance]


def test_concurrent_requests_publish_every_change_once_in_order(db: Index) -> None:
    queue = _queue()
    consumer = Consumer(queue)
    index = db.connect()
    publisher = ChangePublisher(index, queue)

    def request() -> None:
        for _ in range(5):
            _store(index, _record(uid()))
            publisher.publish_after_change()

    threads = [threading.Thread(target=request) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert index.unpublished_changes(100) == []  # no change was left for the timer
    sequences = [e.sequence for e in consumer.events()]
    assert len(sequences) == 30
    assert sequences == sorted(sequences) and len(set(sequences)) == 30


# --- study stable ------------------------------------------------------------------------------
QUIET = 300


def test_a_study_of_500_instances_is_announced_once_after_its_quiet_period(index: SqlMetadataIndex) -> None:
    queue = _queue()
    consumer = Consumer(queue)
    publisher = ChangePublisher(index, queue)
    study = uid()
    for _ in range(499):
        record = _record(study)
        index.commit_instance(record, index.begin_instance(record, replace=False))
    last = _store(index, _record(study))
    assert publisher.announce_stable_studies(QUIET, now=last.timestamp + timedelta(seconds=QUIET - 1)) == 0
    assert publisher.announce_stable_studies(QUIET, now=last.timestamp + timedelta(seconds=QUIET + 1)) == 1
    assert publisher.announce_stable_studies(QUIET, now=last.timestamp + timedelta(days=1)) == 0
    (event,) = consumer.events()
    assert event == DicomEvent(
        id=f"default:stable:{study}:{last.sequence}",
        type=STUDY_STABLE,
        sequence=last.sequence,
        partition="default",
        study=study,
        series=None,
        instance=None,
        time=last.timestamp,
    )


def test_a_later_change_yields_a_new_stable_event_after_its_own_quiet_period(index: SqlMetadataIndex) -> None:
    queue = _queue()
    consumer = Consumer(queue)
    publisher = ChangePublisher(index, queue, partition="default")
    study = uid()
    first = _store(index, _record(study))
    assert publisher.announce_stable_studies(QUIET, now=first.timestamp + timedelta(seconds=QUIET + 1)) == 1
    later = _store(index, _record(study))
    just_before = later.timestamp + timedelta(seconds=QUIET - 1)
    assert publisher.announce_stable_studies(QUIET, now=just_before) == 0
    assert publisher.announce_stable_studies(QUIET, now=later.timestamp + timedelta(seconds=QUIET + 1)) == 1
    events = consumer.events()
    assert [(e.type, e.sequence) for e in events] == [
        (STUDY_STABLE, first.sequence),
        (STUDY_STABLE, later.sequence),
    ]
    assert events[0].id != events[1].id


def test_studies_quiet_at_different_times_are_announced_separately(index: SqlMetadataIndex) -> None:
    queue = _queue()
    consumer = Consumer(queue)
    publisher = ChangePublisher(index, queue)
    a, b = uid(), uid()
    ea = _store(index, _record(a))
    eb = _store(index, _record(b))
    late = eb.timestamp + timedelta(seconds=QUIET + 1)
    assert publisher.announce_stable_studies(QUIET, now=late, limit=1) == 2  # two rounds of one
    assert [(e.study, e.sequence) for e in consumer.events()] == [(a, ea.sequence), (b, eb.sequence)]


def test_a_stable_event_the_queue_refused_is_announced_next_time(index: SqlMetadataIndex) -> None:
    inner = _queue()
    consumer = Consumer(inner)
    publisher = ChangePublisher(index, FlakyQueue(inner, fail={1}))
    entry = _store(index, _record(uid()))
    now = entry.timestamp + timedelta(seconds=QUIET + 1)
    with pytest.raises(Unavailable):
        publisher.announce_stable_studies(QUIET, now=now)
    assert publisher.announce_stable_studies(QUIET, now=now) == 1
    assert [e.type for e in consumer.events()] == [STUDY_STABLE]


def test_the_default_now_is_the_current_time(index: SqlMetadataIndex) -> None:
    queue = _queue()
    consumer = Consumer(queue)
    publisher = ChangePublisher(index, queue)
    _store(index, _record(uid()))
    assert publisher.announce_stable_studies(3600) == 0  # it changed just now
    assert publisher.announce_stable_studies(0.0) == 1  # quiet for zero seconds: now
    assert [e.type for e in consumer.events()] == [STUDY_STABLE]


# --- the web layer publishes after each STOW and delete ------------------------------------------
CT_SMALL = Path(__file__).resolve().parents[1] / "data" / "ct" / "CT_small.dcm"


class Client:
    """The STOW and delete handlers behind Starlette routes, called over ASGI (no server, no thread)."""

    def __init__(self, app: App) -> None:
        self.app = app  # what the handlers see (a test may swap it)
        self.asgi = Starlette(
            routes=[
                Route("/studies", web_stow.store_instances, methods=["POST"]),
                Route("/studies/{study}", web_delete.delete, methods=["DELETE"]),
            ]
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())


@pytest.fixture
def web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[App, Client]:
    """An app built from default settings in a temporary folder, and a client of its handlers."""
    app = build(
        Settings.from_env({"DICOMWEB_DATA_DIR": str(tmp_path / "data"), "DICOMWEB_EVENTS_BATCH_MS": "0"})
    )
    client = Client(app)
    monkeypatch.setattr(web_stow, "app_for", lambda request: client.app)
    monkeypatch.setattr(web_delete, "app_for", lambda request: client.app)
    return app, client


def _stow(client: Client) -> str:
    response = client.request(
        "POST",
        "/studies",
        content=CT_SMALL.read_bytes(),
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    return str(pydicom.dcmread(CT_SMALL, stop_before_pixels=True).StudyInstanceUID)


def test_a_stow_and_a_delete_publish_their_events_as_they_answer(web: tuple[App, Client]) -> None:
    """Published by the response's background task: by the time the ASGI call ends."""
    app, client = web
    queue = app.events
    assert isinstance(queue, InProcessEventQueue)
    study = _stow(client)
    assert [m.subject for m in queue.pending()] == [INSTANCE_CREATED]  # already in the queue
    assert client.request("DELETE", f"/studies/{study}").status_code == 204
    assert [m.subject for m in queue.pending()] == [INSTANCE_CREATED, INSTANCE_DELETED]
    assert app.service.index.unpublished_changes(10) == []


def test_a_failing_queue_never_fails_the_request(
    web: tuple[App, Client], caplog: pytest.LogCaptureFixture
) -> None:
    app, client = web
    inner = app.events
    assert isinstance(inner, InProcessEventQueue)
    broken = dataclasses.replace(app, publisher=ChangePublisher(app.service.index, FlakyQueue(inner, {1, 2})))
    client.app = broken
    with caplog.at_level(logging.WARNING, logger="shared.core.publisher"):
        study = _stow(client)
        assert client.request("DELETE", f"/studies/{study}").status_code == 204
    assert len(app.service.index.unpublished_changes(10)) == 2  # kept for the timer
    assert "Unavailable" in caplog.text and study not in caplog.text
    assert broken.publisher.publish_pending() == 2  # the timer's call: the queue is back
    assert [m.subject for m in inner.pending()] == [INSTANCE_CREATED, INSTANCE_DELETED]


# --- the timer ---------------------------------------------------------------------------------
class RecordingPublisher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def publish_pending(self, limit: int = 500) -> int:
        self.calls.append(("publish_pending", limit))
        return 0

    def announce_stable_studies(self, quiet_seconds: float, now: object = None) -> int:
        self.calls.append(("announce_stable_studies", quiet_seconds))
        return 0


def test_the_events_blueprint_is_one_timer_that_publishes_then_announces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    import function_app
    from functions import events

    assert function_app.events is events  # registered by the app (get_functions runs once per app)
    host = func.FunctionApp()
    host.register_functions(events.bp)
    (function,) = host.get_functions()
    trigger = dict(function.get_trigger().get_dict_repr())
    trigger.pop("direction")
    assert (function.get_function_name(), trigger) == (
        "publish_events",
        {
            "type": "timerTrigger",
            "name": "timer",
            "schedule": "0 */1 * * * *",
            "runOnStartup": False,
            "useMonitor": False,
        },
    )
    app = build(Settings.from_env({"DICOMWEB_DATA_DIR": str(tmp_path), "DICOMWEB_STUDY_QUIET_SECONDS": "42"}))
    recorder = RecordingPublisher()
    monkeypatch.setattr(events, "get_app", lambda: dataclasses.replace(app, publisher=recorder))
    user_function = function.get_user_function()
    user_function(TimerRequest(past_due=True))
    assert recorder.calls == [("publish_pending", 500), ("announce_stable_studies", 42)]


# --- publishing_events: after the response, or before an error answer --------------------------
class CountingPublisher:
    batching = False

    def __init__(self) -> None:
        self.calls = 0

    def publish_soon(self) -> None:
        self.calls += 1


def test_events_go_out_after_the_response_is_sent_and_before_an_error_answer() -> None:
    from starlette.responses import Response

    from shared.web.common import publishing_events

    publisher = CountingPublisher()
    app: Any = SimpleNamespace(publisher=publisher)

    async def answer() -> Response:
        return Response(status_code=204)

    async def fail() -> Response:
        raise RuntimeError("the index went away")

    response = asyncio.run(publishing_events(app, answer()))
    assert publisher.calls == 0, "not while the client waits"
    assert response.background is not None
    asyncio.run(response.background())
    assert publisher.calls == 1
    with pytest.raises(RuntimeError):
        asyncio.run(publishing_events(app, fail()))
    assert publisher.calls == 2, "a change may precede the error: published before it is answered"


class CountingQueue:
    """The in-process queue, counting the batches sent to it."""

    def __init__(self, inner: InProcessEventQueue) -> None:
        self.inner = inner
        self.batches = 0

    def publish(self, events: Any) -> None:
        self.batches += 1
        self.inner.publish(events)


def test_stores_within_the_batch_window_are_published_together_after_it(tmp_path: Path) -> None:
    """DICOMWEB_EVENTS_BATCH_MS: the web layer only opens a window; one batch carries its changes.
    (A long window, flushed by hand as its timer would: no timing in the test.)"""
    app = build(Settings.from_env({"DICOMWEB_DATA_DIR": str(tmp_path / "data")}))
    inner = app.events
    assert isinstance(inner, InProcessEventQueue)
    queue = CountingQueue(inner)
    publisher = ChangePublisher(app.service.index, queue, batch_seconds=600)
    client = Client(dataclasses.replace(app, publisher=publisher))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(web_stow, "app_for", lambda request: client.app)
        patch.setattr(web_delete, "app_for", lambda request: client.app)
        study = _stow(client)
        assert client.request("DELETE", f"/studies/{study}").status_code == 204
    assert inner.pending() == [], "nothing yet: the window is open"
    assert len(app.service.index.unpublished_changes(10)) == 2
    publisher.flush()
    assert [m.subject for m in inner.pending()] == [INSTANCE_CREATED, INSTANCE_DELETED]
    assert queue.batches == 1
    assert app.service.index.unpublished_changes(10) == []
    publisher.flush()  # an empty window publishes nothing
    assert queue.batches == 1


def test_the_window_timer_publishes_on_its_own() -> None:
    """The timer of a window calls flush; a later change opens the next window."""
    published: list[int] = []

    class Index:
        def unpublished_changes(self, limit: int) -> list[Any]:
            return []

    publisher = ChangePublisher(Index(), SimpleNamespace(publish=published.append), batch_seconds=0.01)  # type: ignore[arg-type]
    flushed = threading.Event()
    original = publisher.flush

    def flush() -> None:
        original()
        flushed.set()

    publisher.flush = flush  # type: ignore[method-assign]
    publisher.publish_soon()
    assert flushed.wait(10), "the window's timer flushed it"

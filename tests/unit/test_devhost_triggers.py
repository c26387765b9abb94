"""The dev host's non-HTTP triggers over small FunctionApps: blob-created events (files and
Azurite), Service Bus messages from the in-process queue, timers, and their start and stop with
the server's lifespan. The real function_app is never started here."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest
from azure.functions.blob import InputStream
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

from devhost.bindings import BlobPath, UnresolvedSetting, resolve_settings
from devhost.blob_events import BlobWatcher
from devhost.discovery import FunctionSpec, discover
from devhost.ncrontab import CronSchedule
from devhost.queue_events import ServiceBusDispatcher
from devhost.server import build_asgi_app
from devhost.timers import TimerScheduler, timer_zone
from devhost.triggers import TriggerHost, TriggerSettings, triggers_enabled
from shared.adapters.blob_filesystem import FileSystemBlobStore
from shared.adapters.queue_inprocess import InProcessEventQueue
from shared.core.events import DicomEvent
from tests.services import azurite

pytestmark = pytest.mark.anyio

PATIENT_FILE = "scans/2024/DOE^JOHN/1.dcm"  # blob names can carry patient names


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _only(app: func.FunctionApp) -> FunctionSpec:
    (spec,) = discover(app)
    return spec


def _event(number: int = 1) -> DicomEvent:
    return DicomEvent(
        id=f"default:{number}",
        type="dicom.instance.created",
        sequence=number,
        partition="default",
        study="1.2.3",
        series="1.2.3.4",
        instance=f"1.2.3.4.{number}",
        time=datetime(2024, 1, 1, tzinfo=UTC),
    )


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the trigger")
        await asyncio.sleep(0.02)


# --- binding expressions --------------------------------------------------------------------

SETTING_CASES = [
    ("%INBOX%/{name}", "inbox/{name}", "container-reference"),
    ("plain/{name}", "plain/{name}", "no-reference"),
    ("%A%-%B%", "a-b", "two-references"),
    ("0 */%MIN% * * * *", "0 */5 * * * *", "inside-a-schedule"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[:2] for c in SETTING_CASES], ids=[c[2] for c in SETTING_CASES]
)
def test_app_setting_references_resolve_from_the_environment(text: str, expected: str) -> None:
    environ = {"INBOX": "inbox", "A": "a", "B": "b", "MIN": "5"}
    assert resolve_settings(text, environ) == expected


def test_unset_app_setting_is_an_error_naming_it() -> None:
    with pytest.raises(UnresolvedSetting, match="DICOMWEB_INBOX_CONTAINER"):
        resolve_settings("%DICOMWEB_INBOX_CONTAINER%/{name}", {})


BLOB_PATH_CASES = [
    ("inbox/{name}", "a/b/c.dcm", {"name": "a/b/c.dcm"}, "name-takes-subfolders"),
    ("inbox/{name}", "x.dcm", {"name": "x.dcm"}, "top-level-file"),
    ("inbox/{name}", "Doe, Jane (1).DCM", {"name": "Doe, Jane (1).DCM"}, "any-characters"),
    ("inbox/studies/{name}", "studies/x/y", {"name": "x/y"}, "literal-prefix"),
    ("inbox/studies/{name}", "other/x", None, "outside-the-prefix"),
    ("inbox/{folder}/{name}.dcm", "a/b/c.dcm", {"folder": "a/b", "name": "c"}, "two-parameters"),
    ("inbox/{name}.dcm", "x.txt", None, "wrong-extension"),
    ("inbox", "any/thing", {"name": "any/thing"}, "bare-container"),
]


@pytest.mark.parametrize(
    ("path", "blob", "expected"), [c[:3] for c in BLOB_PATH_CASES], ids=[c[3] for c in BLOB_PATH_CASES]
)
def test_blob_path_patterns(path: str, blob: str, expected: dict[str, str] | None) -> None:
    parsed = BlobPath.parse(path)
    assert parsed.container == "inbox"
    assert parsed.match(blob) == expected
    if expected is not None:
        assert blob.startswith(parsed.prefix)


@pytest.mark.parametrize("path", ["{c}/x", "inbox/{a}/{a}", "inbox/{name", "/{name}"], ids=str)
def test_malformed_blob_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="blob path"):
        BlobPath.parse(path)


# --- blob-created events ----------------------------------------------------------------------


class BlobRecorder:
    """A blob-trigger function that records its calls and fails its first `failures` calls."""

    def __init__(self, failures: int = 0, *, path: str = "inbox/{name}", delete_from: Any = None) -> None:
        self.calls: list[InputStream] = []
        self.data: list[bytes] = []
        self.threads: list[int] = []
        self.failures = failures
        app = func.FunctionApp()

        @app.blob_trigger(arg_name="blob", path=path, connection="AzureWebJobsStorage")
        def record_blob(blob: func.InputStream) -> None:
            self.calls.append(blob)  # type: ignore[arg-type]
            self.data.append(blob.read())
            self.threads.append(threading.get_ident())
            if delete_from is not None and blob.name is not None:
                delete_from.delete(blob.name.split("/", 1)[1])
            if len(self.calls) <= self.failures:
                raise RuntimeError("not this time")

        self.spec = _only(app)


def _watcher(recorder: BlobRecorder, store: Any, path: str = "inbox/{name}", **options: Any) -> BlobWatcher:
    options.setdefault("retry_seconds", 0.0)
    return BlobWatcher(recorder.spec, store, BlobPath.parse(path), **options)


async def _poll(watcher: BlobWatcher) -> int:
    started = await watcher.poll()
    await watcher.idle()
    return started


@pytest.fixture
def inbox(tmp_path: Path) -> FileSystemBlobStore:
    return FileSystemBlobStore(tmp_path / "inbox")


async def test_file_in_a_subfolder_is_dispatched_once_as_an_input_stream(
    inbox: FileSystemBlobStore, tmp_path: Path
) -> None:
    inbox.put(PATIENT_FILE, BytesIO(b"DICM-bytes"))
    recorder = BlobRecorder()
    watcher = _watcher(recorder, inbox)
    assert await _poll(watcher) == 1
    assert await _poll(watcher) == 0, "no double dispatch while the blob stays"
    (blob,) = recorder.calls
    assert isinstance(blob, InputStream)
    assert blob.name == f"inbox/{PATIENT_FILE}"
    assert blob.length == len(b"DICM-bytes")
    assert recorder.data == [b"DICM-bytes"]
    assert blob.uri == (tmp_path / "inbox" / PATIENT_FILE).as_uri()
    assert recorder.threads[0] != threading.get_ident(), "sync functions run in a worker thread"


async def test_async_blob_function_runs_on_the_event_loop(inbox: FileSystemBlobStore) -> None:
    threads: list[int] = []
    app = func.FunctionApp()

    @app.blob_trigger(arg_name="blob", path="inbox/{name}", connection="AzureWebJobsStorage")
    async def ingest(blob: func.InputStream) -> None:
        threads.append(threading.get_ident())

    inbox.put("a.dcm", BytesIO(b"x"))
    await _poll(BlobWatcher(_only(app), inbox, BlobPath.parse("inbox/{name}")))
    assert threads == [threading.get_ident()]


async def test_partial_files_and_names_outside_the_pattern_are_not_dispatched(
    inbox: FileSystemBlobStore, tmp_path: Path
) -> None:
    (tmp_path / "inbox" / ".tmp-abc123").write_bytes(b"half a file")  # the store's write in progress
    inbox.put("other/x.dcm", BytesIO(b"x"))
    inbox.put("studies/y.dcm", BytesIO(b"y"))
    recorder = BlobRecorder(path="inbox/studies/{name}")
    await _poll(_watcher(recorder, inbox, "inbox/studies/{name}"))
    assert [blob.name for blob in recorder.calls] == ["inbox/studies/y.dcm"]


async def test_a_file_still_being_copied_waits_until_it_settles(
    inbox: FileSystemBlobStore, tmp_path: Path
) -> None:
    recorder = BlobRecorder()
    watcher = _watcher(recorder, inbox, settle_seconds=0.3)
    (tmp_path / "inbox" / "copied.dcm").write_bytes(b"being copied")  # by hand, not through the store
    assert await _poll(watcher) == 0
    await asyncio.sleep(0.35)
    assert await _poll(watcher) == 1


async def test_a_failing_function_is_called_again_until_it_succeeds(inbox: FileSystemBlobStore) -> None:
    inbox.put("a.dcm", BytesIO(b"x"))
    recorder = BlobRecorder(failures=2)
    watcher = _watcher(recorder, inbox, max_tries=5)
    for _ in range(5):
        await _poll(watcher)
    assert len(recorder.calls) == 3
    assert recorder.data == [b"x", b"x", b"x"], "every try reads the blob afresh"


async def test_gives_up_after_max_tries_and_logs_without_the_name(
    inbox: FileSystemBlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    inbox.put(PATIENT_FILE, BytesIO(b"x"))
    recorder = BlobRecorder(failures=1000)
    watcher = _watcher(recorder, inbox, max_tries=3)
    with caplog.at_level(logging.INFO, logger="devhost"):
        for _ in range(6):
            await _poll(watcher)
    assert len(recorder.calls) == 3
    assert list(inbox.list()) == [PATIENT_FILE], "the blob is left where it is"
    lines = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("devhost")
    ]
    assert len(lines) == 3
    assert re.fullmatch(
        r"blob record_blob failed \(try 1 of 3, again in 0\.0s\) \d+\.\dms: RuntimeError", lines[0]
    )
    assert "giving up" in lines[2]
    assert not any("DOE" in line for line in lines)


async def test_retries_back_off_and_double(inbox: FileSystemBlobStore) -> None:
    now = [1000.0]
    inbox.put("a.dcm", BytesIO(b"x"))
    recorder = BlobRecorder(failures=1000)
    watcher = _watcher(recorder, inbox, max_tries=5, retry_seconds=10.0, clock=lambda: now[0])
    await _poll(watcher)
    now[0] += 9.9
    await _poll(watcher)
    assert len(recorder.calls) == 1, "not before the first back-off (10 s)"
    now[0] += 0.1
    await _poll(watcher)
    assert len(recorder.calls) == 2
    now[0] += 19.9
    await _poll(watcher)
    assert len(recorder.calls) == 2, "the second back-off is 20 s"
    now[0] += 0.1
    await _poll(watcher)
    assert len(recorder.calls) == 3


async def test_a_name_dropped_again_after_removal_is_dispatched_again(inbox: FileSystemBlobStore) -> None:
    recorder = BlobRecorder(delete_from=inbox)  # like the ingest function: removes what it stored
    watcher = _watcher(recorder, inbox)
    inbox.put("same.dcm", BytesIO(b"first"))
    await _poll(watcher)
    assert list(inbox.list()) == []
    assert await _poll(watcher) == 0
    inbox.put("same.dcm", BytesIO(b"second"))
    await _poll(watcher)
    assert recorder.data == [b"first", b"second"]


async def test_a_blob_removed_before_its_retry_is_forgotten(inbox: FileSystemBlobStore) -> None:
    inbox.put("a.dcm", BytesIO(b"x"))
    recorder = BlobRecorder(failures=1)
    watcher = _watcher(recorder, inbox)
    await _poll(watcher)
    inbox.delete("a.dcm")
    await _poll(watcher)
    inbox.put("a.dcm", BytesIO(b"y"))
    await _poll(watcher)
    assert recorder.data == [b"x", b"y"]


async def test_the_running_watcher_picks_up_new_files_and_stops(inbox: FileSystemBlobStore) -> None:
    recorder = BlobRecorder()
    watcher = _watcher(recorder, inbox, poll_seconds=0.02)
    watcher.start()
    try:
        inbox.put("later/b.dcm", BytesIO(b"b"))
        await _until(lambda: len(recorder.calls) == 1)
    finally:
        await watcher.stop()
    inbox.put("after-stop.dcm", BytesIO(b"c"))
    await asyncio.sleep(0.1)
    assert len(recorder.calls) == 1


async def test_stop_lets_a_dispatch_in_flight_finish(inbox: FileSystemBlobStore) -> None:
    finished: list[bool] = []
    app = func.FunctionApp()

    @app.blob_trigger(arg_name="blob", path="inbox/{name}", connection="AzureWebJobsStorage")
    def slow(blob: func.InputStream) -> None:
        time.sleep(0.3)
        finished.append(True)

    inbox.put("a.dcm", BytesIO(b"x"))
    watcher = BlobWatcher(_only(app), inbox, BlobPath.parse("inbox/{name}"))
    await watcher.poll()
    await watcher.stop(grace_seconds=5)
    assert finished == [True]


async def test_blob_uploaded_to_azurite_is_dispatched_once() -> None:
    from shared.adapters.blob_azure import AzureBlobStore

    container = f"inbox-{uuid.uuid4().hex[:12]}"
    store = AzureBlobStore.from_connection_string(azurite(), container)
    try:
        store.put("sub/dir/a b.dcm", BytesIO(b"azure bytes"))
        recorder = BlobRecorder(path=f"{container}/{{name}}")
        watcher = _watcher(recorder, store, f"{container}/{{name}}")
        assert await _poll(watcher) == 1
        assert await _poll(watcher) == 0
        (blob,) = recorder.calls
        assert blob.name == f"{container}/sub/dir/a b.dcm"
        assert recorder.data == [b"azure bytes"]
        assert blob.uri is not None and blob.uri.endswith(f"/{container}/sub/dir/a%20b.dcm")
        store.put("second.dcm", BytesIO(b"2"))
        assert await _poll(watcher) == 1
    finally:
        store.delete("sub/dir/a b.dcm")
        store.delete("second.dcm")
        store.close()


# --- Service Bus messages from the in-process queue -----------------------------------------


class QueueRecorder:
    def __init__(self, failures: int = 0, name: str = "on_event", queue_name: str = "dicom-events") -> None:
        self.messages: list[ServiceBusMessage] = []
        self.failures = failures
        app = func.FunctionApp()

        def on_event(msg: func.ServiceBusMessage) -> None:
            self.messages.append(msg)  # type: ignore[arg-type]
            if len(self.messages) <= self.failures:
                raise RuntimeError("downstream unavailable")

        on_event.__name__ = name
        app.service_bus_queue_trigger(
            arg_name="msg", queue_name=queue_name, connection="ServiceBusConnection"
        )(on_event)
        self.spec = _only(app)


@pytest.fixture
def queue() -> InProcessEventQueue:
    return InProcessEventQueue(max_delivery_count=3, retry_delay=0.0)


async def _drain(queue: InProcessEventQueue) -> None:
    assert await asyncio.to_thread(queue.drain, 10.0)


async def test_a_message_is_delivered_as_a_service_bus_message(queue: InProcessEventQueue) -> None:
    recorder = QueueRecorder()
    dispatcher = ServiceBusDispatcher([recorder.spec], queue, "dicom-events")
    dispatcher.start()
    queue.publish([_event()])
    await _drain(queue)
    await dispatcher.stop()
    (message,) = recorder.messages
    assert isinstance(message, ServiceBusMessage)
    assert message.get_body() == _event().body()
    assert message.message_id == "default:1"
    assert message.content_type == "application/json"
    assert message.subject == message.label == "dicom.instance.created"
    assert message.delivery_count == 1
    assert message.application_properties == {"type": "dicom.instance.created", "studyInstanceUid": "1.2.3"}
    assert message.user_properties == message.application_properties
    assert message.enqueued_time_utc is not None and message.enqueued_time_utc.tzinfo is not None
    assert message.sequence_number == 1
    assert message.metadata is not None
    assert message.metadata["MessageId"] == "default:1"
    assert message.metadata["UserProperties"] == message.application_properties


async def test_a_failed_delivery_is_redelivered(queue: InProcessEventQueue) -> None:
    recorder = QueueRecorder(failures=1)
    ServiceBusDispatcher([recorder.spec], queue, "dicom-events").start()
    queue.publish([_event()])
    await _drain(queue)
    assert [message.delivery_count for message in recorder.messages] == [1, 2]
    assert queue.dead_letters() == []


async def test_a_message_that_always_fails_is_dead_lettered(
    queue: InProcessEventQueue, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = QueueRecorder(failures=1000)
    ServiceBusDispatcher([recorder.spec], queue, "dicom-events").start()
    with caplog.at_level(logging.INFO, logger="devhost"):
        queue.publish([_event()])
        await _drain(queue)
    assert [message.delivery_count for message in recorder.messages] == [1, 2, 3]
    assert [message.message_id for message in queue.dead_letters()] == ["default:1"]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("devhost")]
    assert re.fullmatch(r"servicebus on_event failed \(delivery 1\) \d+\.\dms: RuntimeError", lines[0])
    assert not any("1.2.3" in line for line in lines), "no message body or UIDs in the log"


async def test_redelivery_skips_functions_that_already_completed(queue: InProcessEventQueue) -> None:
    steady = QueueRecorder(name="steady")
    flaky = QueueRecorder(failures=1, name="flaky")
    ServiceBusDispatcher([steady.spec, flaky.spec], queue, "dicom-events").start()
    queue.publish([_event(1), _event(2)])
    await _drain(queue)
    assert [m.message_id for m in steady.messages] == ["default:1", "default:2"]
    assert [(m.message_id, m.delivery_count) for m in flaky.messages] == [
        ("default:1", 1),
        ("default:1", 2),
        ("default:2", 1),
    ]


async def test_async_service_bus_function_runs_on_the_event_loop(queue: InProcessEventQueue) -> None:
    threads: list[int] = []
    app = func.FunctionApp()

    @app.service_bus_queue_trigger(arg_name="msg", queue_name="q", connection="ServiceBusConnection")
    async def on_event(msg: func.ServiceBusMessage) -> None:
        await asyncio.sleep(0)
        threads.append(threading.get_ident())

    ServiceBusDispatcher([_only(app)], queue, "q").start()
    queue.publish([_event()])
    await _drain(queue)
    assert threads == [threading.get_ident()]


async def test_after_stop_messages_stay_queued(queue: InProcessEventQueue) -> None:
    recorder = QueueRecorder()
    dispatcher = ServiceBusDispatcher([recorder.spec], queue, "dicom-events")
    dispatcher.start()
    await dispatcher.stop()
    queue.publish([_event()])
    await asyncio.sleep(0.1)
    assert recorder.messages == []
    assert [m.message_id for m in queue.pending()] == ["default:1"]


# --- timers -----------------------------------------------------------------------------------


class TimerRecorder:
    def __init__(
        self, schedule: str = "* * * * * *", *, run_on_startup: bool = False, sleep: float = 0.0
    ) -> None:
        self.requests: list[TimerRequest] = []
        self.running = 0
        self.most_running = 0
        self.fail = False
        app = func.FunctionApp()

        @app.timer_trigger(
            schedule=schedule, arg_name="timer", run_on_startup=run_on_startup, use_monitor=False
        )
        def tick(timer: func.TimerRequest) -> None:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.requests.append(timer)  # type: ignore[arg-type]
            time.sleep(sleep)
            self.running -= 1
            if self.fail:
                raise RuntimeError("timer work failed")

        self.spec = _only(app)


async def test_the_scheduler_fires_a_timer_function_with_a_timer_request() -> None:
    recorder = TimerRecorder("* * * * * *")
    scheduler = TimerScheduler(recorder.spec, CronSchedule.parse("* * * * * *"))
    scheduler.start()
    try:
        await _until(lambda: len(recorder.requests) >= 2, timeout=4)
    finally:
        await scheduler.stop()
    request = recorder.requests[0]
    assert isinstance(request, TimerRequest)
    assert request.past_due is False
    assert set(request.schedule_status) == {"Last", "Next", "LastUpdated"}


async def test_run_on_startup_runs_once_at_start() -> None:
    recorder = TimerRecorder("0 0 0 1 1 *", run_on_startup=True)
    scheduler = TimerScheduler(recorder.spec, CronSchedule.parse("0 0 0 1 1 *"), run_on_startup=True)
    scheduler.start()
    await _until(lambda: len(recorder.requests) == 1)
    await scheduler.stop()
    assert len(recorder.requests) == 1


async def test_runs_of_one_timer_never_overlap_and_errors_do_not_stop_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = TimerRecorder(sleep=1.3)
    recorder.fail = True
    scheduler = TimerScheduler(recorder.spec, CronSchedule.parse("* * * * * *"))
    with caplog.at_level(logging.WARNING, logger="devhost"):
        scheduler.start()
        try:
            await _until(lambda: len(recorder.requests) >= 2, timeout=6)
        finally:
            await scheduler.stop()
    assert recorder.most_running == 1
    assert sum("timer tick failed" in r.getMessage() for r in caplog.records) >= 1


async def test_a_late_run_is_past_due() -> None:
    recorder = TimerRecorder()
    scheduler = TimerScheduler(recorder.spec, CronSchedule.parse("* * * * * *"))
    await scheduler.fire(scheduler.now() - timedelta(seconds=5))
    await scheduler.fire(scheduler.now())
    assert [request.past_due for request in recorder.requests] == [True, False]


def test_timer_zone_defaults_to_utc_and_reads_iana_names() -> None:
    assert timer_zone(None) is UTC
    assert str(timer_zone("Europe/Paris")) == "Europe/Paris"


# --- the trigger host: settings, selection, lifespan -------------------------------------------

ENABLED_CASES = [
    ({}, True, "default-on"),
    ({"DEVHOST_TRIGGERS": "off"}, False, "off"),
    ({"DEVHOST_TRIGGERS": "0"}, False, "zero"),
    ({"DEVHOST_TRIGGERS": "on"}, True, "on"),
]


@pytest.mark.parametrize(
    ("environ", "enabled"), [c[:2] for c in ENABLED_CASES], ids=[c[2] for c in ENABLED_CASES]
)
def test_devhost_triggers_switch(environ: dict[str, str], enabled: bool) -> None:
    assert triggers_enabled(environ) is enabled


def test_trigger_settings_from_the_environment() -> None:
    assert TriggerSettings.from_env({}) == TriggerSettings(1.0, 5, 0.5, None)
    settings = TriggerSettings.from_env(
        {"DEVHOST_BLOB_POLL_SECONDS": "0.2", "DEVHOST_BLOB_MAX_TRIES": "2", "WEBSITE_TIME_ZONE": "UTC"}
    )
    assert (settings.blob_poll_seconds, settings.blob_max_tries, settings.time_zone) == (0.2, 2, "UTC")
    with pytest.raises(ValueError, match="DEVHOST_BLOB_MAX_TRIES"):
        TriggerSettings.from_env({"DEVHOST_BLOB_MAX_TRIES": "0"})


ENVIRON = {
    "DICOMWEB_INBOX_CONTAINER": "inbox",
    "DICOMWEB_EVENTS_QUEUE": "dicom-events",
    "EVERY_SECOND": "* * * * * *",
}


class TriggerApp:
    """A FunctionApp with every kind of trigger, and the shared app (stores, queue) it runs on."""

    def __init__(self, tmp_path: Path, events: str = "inprocess") -> None:
        self.blobs: list[str] = []
        self.messages: list[str] = []
        self.ticks = 0
        app = func.FunctionApp()

        @app.blob_trigger(
            arg_name="blob",
            path="%DICOMWEB_INBOX_CONTAINER%/{name}",
            connection="AzureWebJobsStorage",
            source=func.BlobSource.EVENT_GRID,
        )
        def ingest_blob(blob: func.InputStream) -> None:
            self.blobs.append(str(blob.name))

        @app.service_bus_queue_trigger(
            arg_name="msg", queue_name="%DICOMWEB_EVENTS_QUEUE%", connection="ServiceBusConnection"
        )
        def sync_fhir(msg: func.ServiceBusMessage) -> None:
            self.messages.append(msg.message_id)

        @app.service_bus_queue_trigger(
            arg_name="msg", queue_name="elsewhere", connection="ServiceBusConnection"
        )
        def other_queue(msg: func.ServiceBusMessage) -> None:
            raise AssertionError("not the app's events queue")

        @app.service_bus_topic_trigger(
            arg_name="msg", topic_name="t", subscription_name="s", connection="ServiceBusConnection"
        )
        def on_topic(msg: func.ServiceBusMessage) -> None:
            raise AssertionError("topics are not served")

        @app.timer_trigger(schedule="%EVERY_SECOND%", arg_name="timer", run_on_startup=True)
        def republish(timer: func.TimerRequest) -> None:
            self.ticks += 1

        self.function_app = app
        settings = SimpleNamespace(
            inbox_container="inbox",
            failed_container="inbox-failed",
            events=events,
            events_queue="dicom-events",
        )
        self.shared = SimpleNamespace(
            settings=settings,
            inbox=FileSystemBlobStore(tmp_path / "inbox"),
            failed=FileSystemBlobStore(tmp_path / "inbox-failed"),
            events=InProcessEventQueue(max_delivery_count=3, retry_delay=0.0),
        )
        self.provided = 0

    def provide(self) -> Any:
        self.provided += 1
        return self.shared

    def host(self, environ: dict[str, str] | None = None) -> TriggerHost:
        return TriggerHost(
            discover(self.function_app),
            environ=ENVIRON if environ is None else environ,
            settings=TriggerSettings(blob_poll_seconds=0.02, blob_settle_seconds=0.0),
            app_provider=self.provide,
        )


@pytest.fixture
async def trigger_app(tmp_path: Path) -> AsyncIterator[TriggerApp]:
    yield TriggerApp(tmp_path)


async def test_the_trigger_host_serves_blob_queue_and_timer_functions(
    trigger_app: TriggerApp, caplog: pytest.LogCaptureFixture
) -> None:
    host = trigger_app.host()
    with caplog.at_level(logging.INFO, logger="devhost"):
        await host.start()
    try:
        assert (len(host.watchers), len(host.dispatchers), len(host.timers)) == (1, 1, 1)
        trigger_app.shared.inbox.put(PATIENT_FILE, BytesIO(b"x"))
        trigger_app.shared.events.publish([_event()])
        await _until(lambda: bool(trigger_app.blobs and trigger_app.messages and trigger_app.ticks))
    finally:
        await host.stop()
    assert trigger_app.blobs == [f"inbox/{PATIENT_FILE}"]
    assert trigger_app.messages == ["default:1"]
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "other_queue" in warnings and "on_topic" in warnings
    assert "DOE" not in caplog.text


async def test_with_a_primary_lock_one_host_runs_blobs_and_timers_and_every_host_dispatches(
    trigger_app: TriggerApp, tmp_path: Path
) -> None:
    """Several worker processes (DEVHOST_WORKERS): the holder of the lock file watches the inbox and
    runs the timers; every worker dispatches its own in-process queue; when the holder stops,
    another worker takes the lock and its triggers over."""
    lock = tmp_path / "triggers.lock"

    def host() -> TriggerHost:
        return TriggerHost(
            discover(trigger_app.function_app),
            environ=ENVIRON,
            settings=TriggerSettings(blob_poll_seconds=0.02, blob_settle_seconds=0.0),
            app_provider=trigger_app.provide,
            primary_lock=lock,
        )

    first, second = host(), host()
    await first.start()
    await second.start()
    try:
        assert (first.primary, second.primary) == (True, False)
        assert (len(first.watchers), len(first.dispatchers), len(first.timers)) == (1, 1, 1)
        assert (len(second.watchers), len(second.dispatchers), len(second.timers)) == (0, 1, 0)
    finally:
        await first.stop()
    try:
        # the holder stopped (a restart replacing it, say): the other takes its triggers over
        await _until(lambda: second.primary and len(second.timers) == 1 and len(second.watchers) == 1)
        assert (len(second.watchers), len(second.dispatchers), len(second.timers)) == (1, 1, 1)
        third = host()
        await third.start()
        assert not third.primary and third.watchers == [] and third.timers == []
        await third.stop()
    finally:
        await second.stop()


async def test_an_unresolved_setting_stops_only_that_trigger(
    trigger_app: TriggerApp, caplog: pytest.LogCaptureFixture
) -> None:
    host = trigger_app.host({"EVERY_SECOND": "0 0 0 1 1 *"})
    with caplog.at_level(logging.ERROR, logger="devhost"):
        await host.start()
    await host.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("ingest_blob" in e and "DICOMWEB_INBOX_CONTAINER" in e for e in errors)
    assert any("sync_fhir" in e and "DICOMWEB_EVENTS_QUEUE" in e for e in errors)
    assert trigger_app.ticks == 1, "the timer still ran (on startup)"


async def test_with_service_bus_events_nothing_subscribes_locally(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trigger_app = TriggerApp(tmp_path, events="servicebus")
    host = trigger_app.host()
    with caplog.at_level(logging.INFO, logger="devhost"):
        await host.start()
    await host.stop()
    assert host.dispatchers == []
    assert any("locally nothing consumes" in r.getMessage() for r in caplog.records)


async def test_an_app_with_http_functions_only_never_builds_the_shared_app() -> None:
    app = func.FunctionApp()

    @app.route(route="x")
    def x(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("x")

    def provider() -> Any:
        raise AssertionError("not needed")

    host = TriggerHost(discover(app), environ={}, app_provider=provider)
    await host.start()
    await host.stop()


async def test_triggers_start_and_stop_with_the_asgi_lifespan(trigger_app: TriggerApp) -> None:
    host = trigger_app.host()
    asgi = build_asgi_app(trigger_app.function_app, route_prefix="api", cors_origins=["*"], background=host)
    inbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        return await inbound.get()

    async def send(message: Any) -> None:
        await outbound.put(message)

    server = asyncio.create_task(asgi({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    await inbound.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(outbound.get(), 5))["type"] == "lifespan.startup.complete"
    await _until(lambda: trigger_app.ticks >= 1)
    await inbound.put({"type": "lifespan.shutdown"})
    assert (await asyncio.wait_for(outbound.get(), 15))["type"] == "lifespan.shutdown.complete"
    await server
    assert (host.watchers, host.dispatchers, host.timers) == ([], [], [])
    ticks = trigger_app.ticks
    await asyncio.sleep(1.2)
    assert trigger_app.ticks == ticks, "no timer runs after shutdown"


# --- one real `python -m devhost` -------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]

FIXTURE_APP = textwrap.dedent(
    """
    import os
    import pathlib
    from datetime import UTC, datetime

    import azure.functions as func

    from shared.bootstrap import get_app
    from shared.core.events import DicomEvent

    app = func.FunctionApp()
    OUT = pathlib.Path(os.environ["TRIGGER_OUT"])
    NOW = datetime.now(UTC)


    @app.blob_trigger(
        arg_name="blob",
        path="%DICOMWEB_INBOX_CONTAINER%/{name}",
        connection="AzureWebJobsStorage",
        source=func.BlobSource.EVENT_GRID,
    )
    def ingest_blob(blob: func.InputStream) -> None:
        with (OUT / "blob.txt").open("a") as out:  # appended: a second run would show
            out.write(f"{blob.name}|{blob.read().decode()}")
        get_app().inbox.delete(blob.name.split("/", 1)[1])
        event = DicomEvent("default:7", "dicom.instance.created", 7, "default", "1.2", None, None, NOW)
        get_app().events.publish([event])


    @app.service_bus_queue_trigger(
        arg_name="msg", queue_name="%DICOMWEB_EVENTS_QUEUE%", connection="ServiceBusConnection"
    )
    def on_event(msg: func.ServiceBusMessage) -> None:
        (OUT / "event.txt").write_text(f"{msg.message_id}|{msg.delivery_count}")


    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
    def on_start(timer: func.TimerRequest) -> None:
        with (OUT / "timer.txt").open("a") as out:
            out.write(str(timer.past_due))
    """
)


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 2])
def test_python_m_devhost_raises_blob_queue_and_timer_triggers(tmp_path: Path, workers: int) -> None:
    """A file dropped into the filesystem inbox reaches the blob function, whose event reaches the
    Service Bus function through the shared in-process queue; the timer ran at startup. With two
    worker processes, the file is ingested once and the timer runs once."""
    (tmp_path / "devhost_trigger_app.py").write_text(FIXTURE_APP, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    data = tmp_path / "data"
    env = {
        **os.environ,
        "DEVHOST_APP": "devhost_trigger_app:app",
        "DEVHOST_HOST": "127.0.0.1",
        "DEVHOST_PORT": "0",
        "DEVHOST_BLOB_POLL_SECONDS": "0.1",
        "DEVHOST_BLOB_SETTLE_SECONDS": "0",
        "DICOMWEB_DATA_DIR": str(data),
        "DICOMWEB_BLOB_STORE": "filesystem",
        "DICOMWEB_INDEX": "sql",
        "DICOMWEB_INDEX_URL": "",
        "DICOMWEB_EVENTS": "inprocess",
        "DICOMWEB_INBOX_CONTAINER": "inbox",
        "DICOMWEB_EVENTS_QUEUE": "dicom-events",
        "TRIGGER_OUT": str(out),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
        "PYTHONUNBUFFERED": "1",
        "DEVHOST_WORKERS": str(workers),
    }
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "devhost"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr
        )
    assert process.stdout is not None
    try:
        ready = process.stdout.readline().decode()
        if not ready.startswith("devhost listening on "):
            pytest.fail(f"devhost did not start: {ready!r} {stderr_path.read_text()}")
        dropped = tmp_path / "dropped.dcm"
        dropped.write_bytes(b"dropped bytes")
        (data / "inbox" / "DOE^JANE").mkdir(parents=True, exist_ok=True)
        os.replace(dropped, data / "inbox" / "DOE^JANE" / "1.dcm")  # appears whole, as a copy would not
        deadline = time.monotonic() + 20
        while not (out / "event.txt").exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)  # room for a second (wrong) run of the blob function
        assert (out / "timer.txt").read_text() == "False"
        assert (out / "blob.txt").read_text() == "inbox/DOE^JANE/1.dcm|dropped bytes"
        assert (out / "event.txt").read_text() == "default:7|1"
        assert not (data / "inbox" / "DOE^JANE" / "1.dcm").exists()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
    log = stderr_path.read_text()
    assert process.returncode == 0, log
    assert log.count("triggers: 1 blob watcher(s), 1 Service Bus dispatcher(s), 1 timer(s)") == 1
    assert log.count("triggers: 0 blob watcher(s), 1 Service Bus dispatcher(s), 0 timer(s)") == workers - 1
    assert re.search(r"blob ingest_blob ok \d+\.\dms", log), log
    assert re.search(r"servicebus on_event ok \(delivery 1\) \d+\.\dms", log), log
    assert "DOE" not in log, "no blob names in the log"
    assert "Traceback" not in log, log

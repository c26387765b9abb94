"""Blob drop: files dropped into the inbox are stored by the STOW pipeline, exactly once, or moved
to the failure container beside a JSON report; backing-service failures raise so the trigger
retries. Each test drives `ingest(...)` the way the blob trigger does (an
`azure.functions.blob.InputStream` of the blob's bytes), with real sample files.

The scenario tests take the `make_drop` fixture; here it builds the filesystem blob stores and a
SQLite index. tests/contract/test_ingest_azurite.py runs the same tests over Azurite.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from azure.functions.blob import InputStream

from shared.adapters.blob_filesystem import FileSystemBlobStore
from shared.adapters.index_sql import SqlMetadataIndex
from shared.core.batch import begin_each, commit_each
from shared.core.changefeed import ChangeAction, ChangeFeedEntry, ChangeFeedQuery
from shared.core.errors import Unavailable
from shared.core.ingest import REASON_TEXT, IngestOutcome, IngestPolicy, IngestStatus, ingest
from shared.core.model import FailureReason, StoredInstance
from shared.core.ports import BlobStore, MetadataIndex
from shared.core.service import DicomwebService
from shared.core.store import InstanceStore, StorePolicy

DATA = Path(__file__).resolve().parents[1] / "data"
CONTAINER = "inbox"


def sample(path: str) -> bytes:
    return (DATA / path).read_bytes()


class Down:
    """Wraps an adapter: the named methods raise Unavailable (`times` calls, or every call)."""

    def __init__(self, inner: Any, *methods: str, times: int | None = None) -> None:
        self._inner = inner
        self._methods = set(methods)
        self._left = times

    def __getattr__(self, name: str) -> Any:
        if name == "begin_instances" and "begin_instance" in self._methods:
            return lambda records, *, replace: begin_each(self, records, replace=replace)
        if name == "commit_instances" and "commit_instance" in self._methods:
            return lambda items: commit_each(self, items)
        attr = getattr(self._inner, name)
        if name not in self._methods:
            return attr

        def down(*args: Any, **kwargs: Any) -> Any:
            if self._left is None or self._left > 0:
                if self._left is not None:
                    self._left -= 1
                raise Unavailable("the backing service is unavailable; retry later")
            return attr(*args, **kwargs)

        return down


@dataclass
class Drop:
    """An inbox, a failure container and the store behind them, as the ingestion sees them."""

    inbox: BlobStore
    failed: BlobStore
    blobs: BlobStore
    index: MetadataIndex
    service: DicomwebService = field(init=False)
    overwrite: bool = False

    def __post_init__(self) -> None:
        policy = StorePolicy(overwrite_existing=self.overwrite)
        self.service = DicomwebService(
            self.blobs, self.index, InstanceStore(self.blobs, self.index, policy), "default"
        )

    def put(self, name: str, data: bytes) -> None:
        self.inbox.put(name, io.BytesIO(data), overwrite=True)

    def event(self, name: str) -> bytes:
        """The blob's bytes as an event delivers them (each delivery reads a fresh stream of them)."""
        with self.inbox.open(name) as fp:
            return fp.read()

    def deliver(
        self, name: str, event: bytes | None = None, policy: IngestPolicy | None = None
    ) -> IngestOutcome:
        """One delivery of the blob-created event, as the trigger makes it: an InputStream of the
        bytes, named `<container>/<name>`."""
        data = event if event is not None else self.event(name)
        stream = InputStream(data=data, name=f"{CONTAINER}/{name}", length=len(data), uri=f"mem://{name}")
        return ingest(name, stream, inbox=self.inbox, failed=self.failed, service=self.service, policy=policy)

    def drop(self, name: str, data: bytes, policy: IngestPolicy | None = None) -> IngestOutcome:
        self.put(name, data)
        return self.deliver(name, policy=policy)

    def inbox_names(self) -> set[str]:
        return set(self.inbox.list())

    def failed_names(self) -> set[str]:
        return set(self.failed.list())

    def failed_bytes(self, name: str) -> bytes:
        with self.failed.open(name) as fp:
            return fp.read()

    def report(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.failed_bytes(name + ".report.json"))
        return doc

    def changes(self) -> list[ChangeFeedEntry]:
        return self.index.read_changes(ChangeFeedQuery(limit=100))

    def stored(self, data: bytes) -> list[StoredInstance]:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        return self.index.find_instances(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        )

    def stored_bytes(self, stored: StoredInstance) -> bytes:
        with self.service.open_instance(stored) as fp:
            return fp.read()

    def main_blobs(self) -> set[str]:
        return set(self.blobs.list())


MakeDrop = Callable[..., Drop]


@pytest.fixture
def make_drop(tmp_path: Path) -> Iterator[MakeDrop]:
    """`make_drop(overwrite=False, wrap_index=..., wrap_inbox=..., wrap_failed=..., wrap_blobs=...)`
    over the filesystem and SQLite (each wrap_* function may wrap that adapter)."""
    indexes: list[SqlMetadataIndex] = []

    def make(overwrite: bool = False, **wraps: Callable[[Any], Any]) -> Drop:
        index = SqlMetadataIndex(f"sqlite:///{tmp_path}/index.sqlite3")
        indexes.append(index)

        def wrap(kind: str, adapter: Any) -> Any:
            return wraps.get(f"wrap_{kind}", lambda a: a)(adapter)

        return Drop(
            inbox=wrap("inbox", FileSystemBlobStore(tmp_path / "inbox")),
            failed=wrap("failed", FileSystemBlobStore(tmp_path / "inbox-failed")),
            blobs=wrap("blobs", FileSystemBlobStore(tmp_path / "blobs")),
            index=wrap("index", index),
            overwrite=overwrite,
        )

    yield make


# --- stored -------------------------------------------------------------------------------------
STORED = [
    ("ct/CT_small.dcm", "explicit LE CT"),
    ("mr/MR_small_jp2klossless.dcm", "JPEG 2000 MR"),
    ("mr/emri_small_RLE.dcm", "RLE multi-frame enhanced MR"),
    ("us/US1_J2KR.dcm", "J2K US"),
    ("us/ExplVR_BigEnd.dcm", "big endian"),
    ("nm_sc/image_dfl.dcm", "deflated"),
    ("charset/chrH31.dcm", "ISO 2022 Japanese"),
    ("seg/seg_image_ct_binary.dcm", "SEG"),
    ("sr/test-SR.dcm", "SR"),
    ("other/waveform_ecg.dcm", "ECG waveform"),
]


@pytest.mark.parametrize("path", [p for p, _ in STORED], ids=[i for _, i in STORED])
def test_a_dropped_dicom_file_is_stored_and_leaves_the_inbox(make_drop: MakeDrop, path: str) -> None:
    drop = make_drop()
    data = sample(path)
    outcome = drop.drop("scans/" + Path(path).name, data)
    assert outcome.status is IngestStatus.STORED
    assert outcome.stored and outcome.failure_key is None
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert outcome.store is not None and outcome.store.sop_instance_uid == ds.SOPInstanceUID
    (stored,) = drop.stored(data)
    assert (stored.sop_class_uid, stored.size) == (ds.SOPClassUID, len(data))
    assert drop.stored_bytes(stored) == data
    assert [c.action for c in drop.changes()] == [ChangeAction.CREATE]
    assert drop.inbox_names() == set()
    assert drop.failed_names() == set()


def test_a_series_dropped_file_by_file_is_indexed_as_one_series(make_drop: MakeDrop) -> None:
    drop = make_drop()
    files = sorted((DATA / "ct/ct2_series").glob("*.dcm"))
    for path in files:
        assert drop.drop(f"ct2/{path.name}", path.read_bytes()).status is IngestStatus.STORED
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    found = drop.index.find_instances(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    assert len(found) == len(files) == 4
    assert len(drop.changes()) == 4
    assert drop.inbox_names() == set()


# --- failed -------------------------------------------------------------------------------------
C000, A900, DUP = FailureReason.CANNOT_UNDERSTAND, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, None
BROKEN = [
    ("malformed/made_garbage.dcm", C000, False, "garbage"),
    ("malformed/made_no_preamble.dcm", C000, False, "no preamble"),
    ("malformed/made_dicm_then_garbage.dcm", C000, False, "DICM then garbage"),
    ("malformed/made_truncated_pixeldata.dcm", C000, True, "truncated pixel data"),
    ("malformed/made_missing_study_uid.dcm", A900, True, "no Study UID"),
    ("malformed/made_invalid_study_uid.dcm", A900, True, "invalid Study UID"),
    ("malformed/made_meta_sop_mismatch.dcm", A900, True, "meta SOP mismatch"),
    ("odd/no_meta.dcm", C000, False, "no file meta"),
    ("odd/MR_truncated.dcm", C000, True, "real truncated MR"),
    ("rt/rtstruct.dcm", C000, False, "RTSTRUCT without meta"),
]


@pytest.mark.parametrize(("path", "reason", "uid_known"), [b[:3] for b in BROKEN], ids=[b[3] for b in BROKEN])
def test_a_broken_file_is_moved_aside_with_a_report(
    make_drop: MakeDrop, path: str, reason: FailureReason, uid_known: bool
) -> None:
    drop = make_drop()
    data = sample(path)
    name = "gateway/" + Path(path).name
    outcome = drop.drop(name, data)
    assert outcome.status is IngestStatus.FAILED
    assert (outcome.failure_key, outcome.report_key) == (name, name + ".report.json")
    assert drop.inbox_names() == set()
    assert drop.failed_names() == {name, name + ".report.json"}
    assert drop.failed_bytes(name) == data
    report = drop.report(name)
    assert set(report) == {
        "failedAt",
        "failureReason",
        "failureReasonHex",
        "failureReasonText",
        "message",
        "sopClassUid",
        "sopInstanceUid",
    }
    assert report["failureReason"] == int(reason)
    assert report["failureReasonHex"] == f"{int(reason):04X}"
    assert report["failureReasonText"] == REASON_TEXT[reason]
    assert report["message"] and report["failedAt"].endswith("Z")
    assert (report["sopInstanceUid"] is not None) is uid_known
    assert drop.changes() == [] and drop.main_blobs() == set()
    assert_no_patient_data(data, json.dumps(report))


def assert_no_patient_data(data: bytes, text: str) -> None:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        values = [str(ds.get(k, "") or "") for k in ("PatientName", "PatientID", "PatientBirthDate")]
    except Exception:
        values = []
    for value in values:
        if len(value) >= 3:
            assert value not in text


NOT_DICOM = [
    (b"", "empty"),
    (b"hello, this is a text file\n", "text"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "png header"),
    (bytes(128) + b"DICM", "preamble only"),
]


@pytest.mark.parametrize("data", [d for d, _ in NOT_DICOM], ids=[i for _, i in NOT_DICOM])
def test_a_non_dicom_file_is_reported_not_retried(make_drop: MakeDrop, data: bytes) -> None:
    drop = make_drop()
    outcome = drop.drop("notes.txt", data)  # returns normally: the trigger does not retry it
    assert outcome.status is IngestStatus.FAILED
    assert drop.report("notes.txt")["failureReason"] == int(FailureReason.CANNOT_UNDERSTAND)
    assert drop.failed_bytes("notes.txt") == data
    assert drop.inbox_names() == set()


def test_a_file_over_the_instance_limit_is_refused_whole(make_drop: MakeDrop) -> None:
    drop = make_drop()
    data = sample("ct/CT_small.dcm")
    outcome = drop.drop("big.dcm", data, policy=IngestPolicy(max_instance_bytes=len(data) - 1))
    assert outcome.status is IngestStatus.FAILED
    assert drop.report("big.dcm")["failureReason"] == int(FailureReason.OUT_OF_RESOURCES)
    assert drop.failed_bytes("big.dcm") == data  # copied whole from the inbox
    assert drop.changes() == []
    assert drop.drop("ok.dcm", data, policy=IngestPolicy(max_instance_bytes=len(data))).stored


# --- duplicates and redelivery ------------------------------------------------------------------
def test_redelivery_of_a_handled_event_changes_nothing(make_drop: MakeDrop) -> None:
    drop = make_drop()
    drop.put("a.dcm", sample("ct/CT_small.dcm"))
    drop.put("b.dcm", sample("malformed/made_garbage.dcm"))
    events = {name: drop.event(name) for name in ("a.dcm", "b.dcm")}
    assert drop.deliver("a.dcm", drop.event("a.dcm")).status is IngestStatus.STORED
    assert drop.deliver("b.dcm", drop.event("b.dcm")).status is IngestStatus.FAILED
    report = drop.report("b.dcm")
    for name, event in events.items():
        assert drop.deliver(name, event).status is IngestStatus.GONE
    assert len(drop.changes()) == 1
    assert drop.report("b.dcm") == report  # the report is not rewritten
    assert drop.inbox_names() == set()


@pytest.mark.parametrize("overwrite", [False, True], ids=["no-overwrite", "overwrite"])
def test_a_crash_before_the_inbox_delete_is_healed_by_redelivery(
    make_drop: MakeDrop, overwrite: bool
) -> None:
    drop = make_drop(overwrite=overwrite, wrap_inbox=lambda a: Down(a, "delete", times=1))
    data = sample("mr/emri_small.dcm")
    drop.put("x/emri.dcm", data)
    event = drop.event("x/emri.dcm")
    with pytest.raises(Unavailable):
        drop.deliver("x/emri.dcm", event)
    (first,) = drop.stored(data)
    assert drop.inbox_names() == {"x/emri.dcm"}  # still there: the event comes again
    outcome = drop.deliver("x/emri.dcm", event)
    assert outcome.status is IngestStatus.ALREADY_STORED and outcome.stored
    assert drop.stored(data) == [first]  # the same version: not stored again, nor replaced
    assert [c.action for c in drop.changes()] == [ChangeAction.CREATE]
    assert drop.inbox_names() == set() and drop.failed_names() == set()


def test_the_same_bytes_dropped_again_are_not_stored_twice(make_drop: MakeDrop) -> None:
    drop = make_drop(overwrite=True)
    data = sample("us/US1_J2KR.dcm")
    assert drop.drop("first.dcm", data).status is IngestStatus.STORED
    assert drop.drop("again/second.dcm", data).status is IngestStatus.ALREADY_STORED
    assert [c.action for c in drop.changes()] == [ChangeAction.CREATE]
    assert drop.inbox_names() == set() and drop.failed_names() == set()


def test_a_different_file_with_the_same_uids_is_a_duplicate(make_drop: MakeDrop) -> None:
    drop = make_drop()
    explicit, implicit = sample("mr/MR_small.dcm"), sample("mr/MR_small_implicit.dcm")
    assert drop.drop("mr/explicit.dcm", explicit).status is IngestStatus.STORED
    outcome = drop.drop("mr/implicit.dcm", implicit)
    assert outcome.status is IngestStatus.FAILED
    report = drop.report("mr/implicit.dcm")
    assert report["failureReason"] == int(FailureReason.DUPLICATE_SOP_INSTANCE)
    assert report["sopInstanceUid"] == str(pydicom.dcmread(io.BytesIO(implicit)).SOPInstanceUID)
    (stored,) = drop.stored(explicit)
    assert drop.stored_bytes(stored) == explicit  # the first one stays
    assert drop.failed_bytes("mr/implicit.dcm") == implicit


def test_with_overwrite_a_different_file_with_the_same_uids_replaces(make_drop: MakeDrop) -> None:
    drop = make_drop(overwrite=True)
    explicit, implicit = sample("mr/MR_small.dcm"), sample("mr/MR_small_implicit.dcm")
    assert drop.drop("explicit.dcm", explicit).status is IngestStatus.STORED
    assert drop.drop("implicit.dcm", implicit).status is IngestStatus.STORED
    (stored,) = drop.stored(implicit)
    assert drop.stored_bytes(stored) == implicit
    assert [c.action for c in drop.changes()] == [ChangeAction.CREATE, ChangeAction.REPLACE]
    assert drop.failed_names() == set()


# --- names --------------------------------------------------------------------------------------
NAMES = [
    ("a/b/c d.dcm", "subfolders and a space"),
    ("ünïcødé/файл 名前.dcm", "unicode"),
    ("no-extension", "no extension"),
    ("odd #1 %20 +&=;,'!(x).dcm", "URL-special characters"),
    ("deep/" * 10 + "leaf.DCM", "ten folders deep"),
    ("..dots../.hidden", "dots"),
]


@pytest.mark.parametrize("name", [n for n, _ in NAMES], ids=[i for _, i in NAMES])
def test_any_name_works_and_the_failure_key_mirrors_it(make_drop: MakeDrop, name: str) -> None:
    drop = make_drop()
    good, bad = sample("ct/CT_small.dcm"), sample("malformed/made_missing_study_uid.dcm")
    assert drop.drop(name, good).status is IngestStatus.STORED
    assert drop.inbox_names() == set()
    outcome = drop.drop(name, bad)
    assert outcome.status is IngestStatus.FAILED
    assert drop.failed_names() == {name, name + ".report.json"}
    assert drop.failed_bytes(name) == bad
    assert drop.inbox_names() == set()


# --- infrastructure failures --------------------------------------------------------------------
DOWN = [
    ("index", "find_instances", "the duplicate check's lookup"),
    ("index", "begin_instance", "the pending index row"),
    ("index", "commit_instance", "the commit"),
    ("blobs", "put", "the instance blob write"),
    ("inbox", "read_range", "the inbox existence check"),
]


@pytest.mark.parametrize(("adapter", "method"), [d[:2] for d in DOWN], ids=[d[2] for d in DOWN])
def test_an_unavailable_service_raises_and_leaves_the_inbox_blob(
    make_drop: MakeDrop, adapter: str, method: str
) -> None:
    drop = make_drop(**{f"wrap_{adapter}": lambda a: Down(a, method, times=1)})
    data = sample("ct/CT_small.dcm")
    drop.put("in/ct.dcm", data)
    event = drop.event("in/ct.dcm")
    with pytest.raises(Unavailable):
        drop.deliver("in/ct.dcm", event)
    assert drop.inbox_names() == {"in/ct.dcm"}
    assert drop.failed_names() == set()
    assert drop.stored(data) == [] and drop.changes() == []
    assert drop.main_blobs() == set()  # a half-done store was undone
    # the redelivered event (the service is back) stores it once
    assert drop.deliver("in/ct.dcm", event).status is IngestStatus.STORED
    assert len(drop.stored(data)) == 1 and drop.inbox_names() == set()


def test_an_unavailable_failure_container_raises_and_moves_nothing(make_drop: MakeDrop) -> None:
    drop = make_drop(wrap_failed=lambda a: Down(a, "put", times=1))
    data = sample("malformed/made_garbage.dcm")
    drop.put("bad.dcm", data)
    event = drop.event("bad.dcm")
    with pytest.raises(Unavailable):
        drop.deliver("bad.dcm", event)
    assert drop.inbox_names() == {"bad.dcm"} and drop.failed_names() == set()
    assert drop.deliver("bad.dcm", event).status is IngestStatus.FAILED
    assert drop.failed_names() == {"bad.dcm", "bad.dcm.report.json"} and drop.inbox_names() == set()


def test_without_a_stream_the_file_is_read_from_the_inbox(make_drop: MakeDrop) -> None:
    drop = make_drop()
    data = sample("nm_sc/JPEG-LL.dcm")
    drop.put("lossless.dcm", data)
    outcome = ingest("lossless.dcm", None, inbox=drop.inbox, failed=drop.failed, service=drop.service)
    assert outcome.status is IngestStatus.STORED
    (stored,) = drop.stored(data)
    assert drop.stored_bytes(stored) == data


# --- the function shell -------------------------------------------------------------------------
INBOX_NAMES = [
    ("inbox/a.dcm", "inbox", "a.dcm"),
    ("inbox/a/b/c d.dcm", "inbox", "a/b/c d.dcm"),
    ("inbox/inbox/x.dcm", "inbox", "inbox/x.dcm"),
    ("drop-zone/x.dcm", "drop-zone", "x.dcm"),
    ("other/x.dcm", "inbox", "other/x.dcm"),
]


@pytest.mark.parametrize(
    ("trigger_name", "container", "expected"), INBOX_NAMES, ids=[n for n, _, _ in INBOX_NAMES]
)
def test_the_trigger_name_loses_its_container_prefix(
    trigger_name: str, container: str, expected: str
) -> None:
    from functions.ingest import inbox_name

    assert inbox_name(trigger_name, container) == expected


class _Publisher:
    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def publish_after_change(self) -> None:  # ChangePublisher's hook for the web layer
        self.calls += 1
        if self.fail:
            raise Unavailable("the event queue is unavailable")


@pytest.mark.parametrize(
    ("path", "calls"),
    [("ct/CT_small.dcm", 1), ("malformed/made_garbage.dcm", 0)],
    ids=["stored-publishes", "failed-does-not"],
)
@pytest.mark.parametrize("fail", [False, True], ids=["publisher-ok", "publisher-down"])
def test_the_shell_publishes_pending_events_after_a_store(
    make_drop: MakeDrop, path: str, calls: int, fail: bool
) -> None:
    from functions.ingest import ingest_into

    drop = make_drop()
    publisher = _Publisher(fail)
    app = SimpleNamespace(
        settings=SimpleNamespace(
            inbox_container=CONTAINER, max_instance_bytes=2**31, spool_memory_bytes=1 << 20
        ),
        inbox=drop.inbox,
        failed=drop.failed,
        service=drop.service,
        publisher=publisher,
    )
    drop.put("f.dcm", sample(path))
    data = drop.event("f.dcm")
    event = InputStream(data=data, name=f"{CONTAINER}/f.dcm", length=len(data))
    outcome = ingest_into(app, event.name, event)  # type: ignore[arg-type]
    assert outcome.status is (IngestStatus.STORED if calls else IngestStatus.FAILED)
    assert publisher.calls == calls  # and a failing publisher never fails the ingestion


SHELL_SCRIPT = """
import io, json, sys
from pathlib import Path
import pydicom
from azure.functions.blob import InputStream
import function_app
from devhost.discovery import discover
from shared.bootstrap import get_app

data_dir, name, sample = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
(spec,) = [s for s in discover(function_app.app) if s.name == "ingest_blob"]
data = sample.read_bytes()
(data_dir / "inbox" / name).parent.mkdir(parents=True, exist_ok=True)
(data_dir / "inbox" / name).write_bytes(data)
blob = InputStream(data=data, name="inbox/" + name, length=len(data), uri="file:///" + name)
result = spec.user_function(blob)
ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
found = get_app().service.index.find_instances(str(ds.StudyInstanceUID))
print(json.dumps({
    "trigger": {k: str(v) for k, v in spec.trigger.items()},
    "arg": spec.arg_name,
    "result": result,
    "sizes": [f.size for f in found],
    "left": (data_dir / "inbox" / name).exists(),
    "unpublished": len(get_app().service.index.unpublished_changes()),
}))
"""


def test_the_registered_blob_function_ingests_an_input_stream(tmp_path: Path) -> None:
    """The function registered in function_app, called as the host calls it (in a fresh process:
    a FunctionApp lists its functions only once)."""
    import os
    import subprocess
    import sys

    env = {
        k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_") and k != "AzureWebJobsStorage"
    }
    env.update({"DICOMWEB_DATA_DIR": str(tmp_path), "DICOMWEB_INBOX_CONTAINER": CONTAINER})
    name = "sub folder/ct ünï.dcm"
    path = DATA / "ct/CT_small.dcm"
    run = subprocess.run(
        [sys.executable, "-c", SHELL_SCRIPT, str(tmp_path), name, str(path)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["trigger"]["type"] == "blobTrigger"
    assert result["trigger"]["path"] == "%DICOMWEB_INBOX_CONTAINER%/{name}"
    assert result["trigger"]["connection"] == "AzureWebJobsStorage"
    assert result["trigger"]["source"] == "EventGrid"
    assert result["arg"] == "blob"
    assert result["result"] is None
    assert result["sizes"] == [path.stat().st_size]
    assert result["left"] is False
    assert result["unpublished"] == 0  # the change's event went to the event queue


# --- upload URLs (signing without a service; tests/contract/test_ingest_azurite.py uses Azurite) --
FILE_NAMES = [
    ("scan.dcm", "scan.dcm"),
    ("C:\\Users\\x\\My Scan (1).dcm", "My_Scan_1_.dcm"),
    ("../../etc/passwd", "passwd"),
    ("a/b/.hidden", "hidden"),
    ("ünïcødé 名前.dcm", "n_c_d_.dcm"),
    ("...", ""),
    ("x" * 300 + ".dcm", "x" * 96 + ".dcm"),
]


@pytest.mark.parametrize(("raw", "expected"), FILE_NAMES, ids=[f"case{i}" for i in range(len(FILE_NAMES))])
def test_a_suggested_file_name_is_sanitised(raw: str, expected: str) -> None:
    from shared.web.uploads import new_blob_name, safe_file_name

    assert safe_file_name(raw) == expected
    parts = new_blob_name(raw).split("/")
    assert parts[0] == "uploads" and len(parts[1].split(".")[0]) == 32
    if expected:
        assert len(parts) == 3 and parts[2] == expected  # uploads/<uuid>/<name>
    else:
        assert len(parts) == 2 and parts[1].endswith(".dcm")  # uploads/<uuid>.dcm
    assert new_blob_name(raw) != new_blob_name(raw)  # always a new blob


LIFETIMES = [("", 15), ("1", 1), ("60", 60), ("10080", 10080), ("0", None), ("10081", None), ("x", None)]


@pytest.mark.parametrize(("raw", "minutes"), LIFETIMES, ids=[f"{r or 'unset'}" for r, _ in LIFETIMES])
def test_the_upload_url_lifetime_setting(
    monkeypatch: pytest.MonkeyPatch, raw: str, minutes: int | None
) -> None:
    from datetime import timedelta

    from shared.web.uploads import lifetime

    monkeypatch.setenv("DICOMWEB_UPLOAD_SAS_MINUTES", raw)
    if minutes is None:
        with pytest.raises(ValueError, match="DICOMWEB_UPLOAD_SAS_MINUTES"):
            lifetime()
    else:
        assert lifetime() == timedelta(minutes=minutes)


class _DelegatingService:
    """What the signer uses of BlobServiceClient when it signs with a user delegation key."""

    account_name = "acct"

    def __init__(self) -> None:
        self.key_requests: list[tuple[Any, Any]] = []

    def get_user_delegation_key(self, start: Any, end: Any) -> Any:
        from azure.storage.blob import UserDelegationKey

        self.key_requests.append((start, end))
        key = UserDelegationKey()
        key.signed_oid, key.signed_tid = "oid-1", "tid-1"
        key.signed_start = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_expiry = end.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_service, key.signed_version = "b", "2021-08-06"
        key.value = "a2V5LWJ5dGVzLWZvci10ZXN0cw=="
        return key

    def get_blob_client(self, container: str, blob: str) -> Any:
        from urllib.parse import quote

        return SimpleNamespace(url=f"https://acct.blob.core.windows.net/{container}/{quote(blob)}")


def test_a_managed_identity_signs_a_write_only_user_delegation_sas() -> None:
    from datetime import UTC, datetime, timedelta
    from urllib.parse import parse_qs, urlsplit

    from shared.adapters.blob_azure_sas import AzureUploadSigner

    service = _DelegatingService()
    signer = AzureUploadSigner(service, "inbox", account_key=None, create_container=False)  # type: ignore[arg-type]
    assert signer.kind == "user-delegation"
    before = datetime.now(UTC)
    grant = signer.sign_upload("uploads/a b.dcm", timedelta(minutes=15))
    url = urlsplit(grant.url)
    assert url.path == "/inbox/uploads/a%20b.dcm"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["sp"] == "cw"  # create and write: no read, list or delete
    assert query["sr"] == "b"  # one blob
    assert (query["skoid"], query["sktid"]) == ("oid-1", "tid-1")
    assert query["se"] == grant.expires_on.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "sig" in query
    assert timedelta(minutes=14) < grant.expires_on - before <= timedelta(minutes=15)
    # the key is reused while it outlives the URLs, and fetched again for a longer one
    signer.sign_upload("uploads/second.dcm", timedelta(minutes=15))
    assert len(service.key_requests) == 1
    start, end = service.key_requests[0]
    assert start < before and end > grant.expires_on
    signer.sign_upload("uploads/week.dcm", timedelta(days=7))
    assert len(service.key_requests) == 2
    with pytest.raises(ValueError):
        signer.sign_upload("uploads/too-long.dcm", timedelta(days=8))

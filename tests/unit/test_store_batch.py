"""InstanceStore.store_instances: a batch of real sample files over the real embedded adapters
(files + SQLite), with failures injected. Each instance is stored or fails on its own, as
store_instance would; outcomes come back in the order of the parts."""

from __future__ import annotations

import dataclasses
import io
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
import pytest

from shared.adapters.blob_filesystem import FileSystemBlobStore
from shared.adapters.index_sql import SqlMetadataIndex
from shared.adapters.index_sql_schema import CREATED, PENDING, instances
from shared.core.attributes import Level
from shared.core.changefeed import ChangeAction, ChangeFeedQuery
from shared.core.errors import Unavailable
from shared.core.layout import instance_blobs, new_version
from shared.core.model import (
    FailureReason,
    InstanceRecord,
    InstanceUids,
    PendingInstance,
    StoreOutcome,
    StoreStatus,
)
from shared.core.query import parse_query
from shared.core.store import InstanceStore, StorePolicy

DATA = Path(__file__).resolve().parents[1] / "data"
CT2 = [DATA / "ct/ct2_series" / f"CT2_{n}.dcm" for n in (17106, 17136, 17166, 17196)]  # one series
CT_SMALL = DATA / "ct/CT_small.dcm"  # another study
MR = DATA / "mr/MR_small.dcm"  # the same instance as the next two, in other transfer syntaxes
MR_IMPLICIT = DATA / "mr/MR_small_implicit.dcm"
MR_RLE = DATA / "mr/MR_small_RLE.dcm"
GARBAGE = DATA / "malformed/made_garbage.dcm"
NO_SOP_UID = DATA / "malformed/made_missing_sop_instance_uid.dcm"
IMPLICIT_LE, EXPLICIT_LE, RLE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"

STORED, FAILED = StoreStatus.STORED, StoreStatus.FAILED
BLOBS = 2  # per instance version: the instance and its sidecar (shared/core/layout.py)


def uids(path: Path) -> InstanceUids:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return InstanceUids(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def parts(*paths: Path) -> list[tuple[BinaryIO, int]]:
    out: list[tuple[BinaryIO, int]] = []
    for path in paths:
        data = path.read_bytes()
        out.append((io.BytesIO(data), len(data)))
    return out


def folder(u: InstanceUids) -> str:
    """The name prefix of every blob of every version of an instance (`<aa>/<bb>/<hash>`)."""
    return instance_blobs("default", u, new_version()).instance.split(".", 1)[0]


def on_disk(root: Path) -> list[str]:
    """Every file under the blob root, temporary ones included."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def index_rows(tmp_path: Path, u: InstanceUids) -> list[tuple[int, str]]:
    """(status, version) of the index rows of an instance, pending ones included."""
    sql = f"SELECT status, version FROM {instances.name} WHERE sop_instance_uid = ?"
    with closing(sqlite3.connect(tmp_path / "index.sqlite3")) as db:
        return [(int(s), str(v)) for s, v in db.execute(sql, (u.instance,))]


def summary(outcomes: Sequence[StoreOutcome]) -> list[tuple[StoreStatus, FailureReason | None, str | None]]:
    return [(o.status, o.reason, o.sop_instance_uid) for o in outcomes]


def make(
    tmp_path: Path,
    *,
    blobs: FileSystemBlobStore | None = None,
    index_type: type[SqlMetadataIndex] = SqlMetadataIndex,
    overwrite: bool = False,
) -> tuple[InstanceStore, SqlMetadataIndex, FileSystemBlobStore]:
    blobs = blobs or FileSystemBlobStore(tmp_path / "blobs")
    index = index_type(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    return InstanceStore(blobs, index, StorePolicy(overwrite_existing=overwrite)), index, blobs


def stored_bytes(blobs: FileSystemBlobStore, index: SqlMetadataIndex, u: InstanceUids) -> bytes:
    [found] = index.find_instances(u.study, u.series, u.instance)
    with blobs.open(instance_blobs("default", u, found.version).instance) as fp:
        return fp.read()


# --- order and per-instance failures ------------------------------------------------------------


def test_outcomes_follow_the_parts_with_failures_among_the_stored(tmp_path: Path) -> None:
    store, index, _ = make(tmp_path)
    study = uids(CT2[0]).study
    outcomes = store.store_instances(
        parts(CT2[0], GARBAGE, CT2[1], NO_SOP_UID, CT_SMALL, CT2[2]), expected_study=study
    )
    assert summary(outcomes) == [
        (STORED, None, uids(CT2[0]).instance),
        (FAILED, FailureReason.CANNOT_UNDERSTAND, None),
        (STORED, None, uids(CT2[1]).instance),
        (FAILED, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, None),
        (FAILED, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS, uids(CT_SMALL).instance),
        (STORED, None, uids(CT2[2]).instance),
    ]
    assert "SOP Instance UID (0008,0018) is missing" in (outcomes[3].message or "")
    assert "study of the request URL" in (outcomes[4].message or "")
    assert [(o.study_uid, o.series_uid) for o in outcomes if o.status is STORED] == [
        (study, uids(CT2[0]).series)
    ] * 3
    assert sorted(s.uids.instance for s in index.find_instances(study)) == sorted(
        uids(p).instance for p in CT2[:3]
    )
    assert index.find_instances(uids(CT_SMALL).study) == []
    assert len(on_disk(tmp_path / "blobs")) == 3 * BLOBS


def test_a_batch_of_failures_only_stores_nothing(tmp_path: Path) -> None:
    store, index, _ = make(tmp_path)
    outcomes = store.store_instances(parts(GARBAGE, NO_SOP_UID))
    assert [o.status for o in outcomes] == [FAILED, FAILED]
    assert index.search(parse_query(Level.STUDY, [])) == []
    assert on_disk(tmp_path / "blobs") == []


# --- the same instance twice in one batch -----------------------------------------------------


def test_the_same_instance_again_in_the_batch_is_a_duplicate_and_the_first_stays(tmp_path: Path) -> None:
    store, index, blobs = make(tmp_path)
    mr = uids(MR)
    outcomes = store.store_instances(parts(MR, CT2[0], MR_IMPLICIT, CT2[1], MR_RLE))
    assert summary(outcomes) == [
        (STORED, None, mr.instance),
        (STORED, None, uids(CT2[0]).instance),
        (FAILED, FailureReason.DUPLICATE_SOP_INSTANCE, mr.instance),
        (STORED, None, uids(CT2[1]).instance),
        (FAILED, FailureReason.DUPLICATE_SOP_INSTANCE, mr.instance),
    ]
    [found] = index.find_instances(mr.study)
    assert (found.transfer_syntax, found.size) == (EXPLICIT_LE, MR.stat().st_size)
    assert stored_bytes(blobs, index, mr) == MR.read_bytes()
    files = on_disk(tmp_path / "blobs")
    assert len([f for f in files if f.startswith(folder(mr))]) == BLOBS  # one copy: the losers left nothing
    assert len(files) == 3 * BLOBS
    assert index_rows(tmp_path, mr) == [(CREATED, found.version)]


def test_with_overwrite_the_same_instance_again_in_the_batch_replaces_it(tmp_path: Path) -> None:
    store, index, blobs = make(tmp_path, overwrite=True)
    mr = uids(MR)
    outcomes = store.store_instances(parts(MR, CT2[0], MR_IMPLICIT, MR_RLE))
    assert summary(outcomes) == [
        (STORED, None, mr.instance),
        (STORED, None, uids(CT2[0]).instance),
        (STORED, None, mr.instance),
        (STORED, None, mr.instance),
    ]
    [found] = index.find_instances(mr.study)
    assert (found.transfer_syntax, found.size) == (RLE, MR_RLE.stat().st_size)  # the last one
    assert stored_bytes(blobs, index, mr) == MR_RLE.read_bytes()
    files = on_disk(tmp_path / "blobs")
    assert sorted(f for f in files if f.startswith(folder(mr))) == sorted(
        instance_blobs("default", mr, found.version).all()
    )  # the superseded versions' blobs are gone
    assert len(files) == 2 * BLOBS
    changes = index.read_changes(ChangeFeedQuery(limit=100))
    assert [(e.action, e.uids.instance) for e in changes] == [
        (ChangeAction.CREATE, mr.instance),
        (ChangeAction.CREATE, uids(CT2[0]).instance),
        (ChangeAction.REPLACE, mr.instance),
        (ChangeAction.REPLACE, mr.instance),
    ]
    assert changes[-1].version == found.version


# --- injected failures ---------------------------------------------------------------------------


class BrokenFolderBlobStore(FileSystemBlobStore):
    """A real filesystem store whose n-th put into one folder fails, as a storage fault would."""

    def __init__(self, root: Path, broken: str | None, fail_on: int) -> None:
        super().__init__(root)
        self.broken = broken
        self.fail_on = fail_on
        self.puts = 0

    def put(self, key: str, data: BinaryIO, *, overwrite: bool = False) -> int:
        if self.broken is not None and key.startswith(self.broken):
            self.puts += 1
            if self.puts == self.fail_on:
                raise OSError("I/O error")
        return super().put(key, data, overwrite=overwrite)


@pytest.mark.parametrize("fail_on", [1, 2], ids=["instance-blob", "sidecar-blob"])
def test_a_failed_blob_write_fails_that_instance_alone_and_a_retry_succeeds(
    tmp_path: Path, fail_on: int
) -> None:
    victim = uids(CT2[1])
    blobs = BrokenFolderBlobStore(tmp_path / "blobs", folder(victim), fail_on)
    store, index, _ = make(tmp_path, blobs=blobs)
    outcomes = store.store_instances(parts(*CT2))
    assert summary(outcomes) == [
        (STORED, None, uids(CT2[0]).instance),
        (FAILED, FailureReason.PROCESSING_FAILURE, victim.instance),
        (STORED, None, uids(CT2[2]).instance),
        (STORED, None, uids(CT2[3]).instance),
    ]
    assert "retry" in (outcomes[1].message or "")
    files = on_disk(tmp_path / "blobs")
    assert [f for f in files if f.startswith(folder(victim))] == []
    assert len(files) == 3 * BLOBS
    assert index_rows(tmp_path, victim) == []  # no pending row left behind
    assert sorted(s.uids.instance for s in index.find_instances(victim.study)) == sorted(
        uids(p).instance for p in (CT2[0], CT2[2], CT2[3])
    )

    blobs.broken = None  # the fault is over
    [retry] = store.store_instances(parts(CT2[1]))
    assert (retry.status, retry.sop_instance_uid) == (STORED, victim.instance)
    assert len(index.find_instances(victim.study)) == 4
    assert stored_bytes(blobs, index, victim) == CT2[1].read_bytes()
    assert len(on_disk(tmp_path / "blobs")) == 4 * BLOBS


class UnavailableAtBegin(SqlMetadataIndex):
    """An index whose batch begin finds the database unavailable (as SqlMetadataIndex answers then)."""

    def begin_instances(
        self, records: Sequence[InstanceRecord], *, replace: bool
    ) -> list[PendingInstance | Exception]:
        return [Unavailable("the index database is unavailable; retry later") for _ in records]


def test_an_index_unavailable_at_begin_raises_and_writes_nothing(tmp_path: Path) -> None:
    """The whole request is then answered 503 (retry later), not each instance failed: a client
    such as dicomweb-client does not retry a 409."""
    store, index, _ = make(tmp_path, index_type=UnavailableAtBegin)
    with pytest.raises(Unavailable):
        store.store_instances(parts(CT2[0], MR, CT2[1]))
    for path in (CT2[0], MR):
        assert index.find_instances(uids(path).study) == []
    assert index.search(parse_query(Level.STUDY, [])) == []
    assert on_disk(tmp_path / "blobs") == []


class UnavailableAfterCommit(SqlMetadataIndex):
    """The commit goes through but its answer is lost (the connection drops during COMMIT)."""

    readable = True

    def commit_instances(
        self, items: Sequence[tuple[InstanceRecord, PendingInstance]]
    ) -> list[Exception | None]:
        super().commit_instances(items)
        return [Unavailable("the connection was lost during COMMIT") for _ in items]

    def find_instances(self, study: str, series: str | None = None, instance: str | None = None) -> Any:
        if not self.readable:
            raise Unavailable("the index is down")
        return super().find_instances(study, series, instance)


def test_a_commit_whose_answer_was_lost_is_stored_when_the_index_says_so(tmp_path: Path) -> None:
    store, index, blobs = make(tmp_path, index_type=UnavailableAfterCommit)
    outcomes = store.store_instances(parts(CT2[0], MR))
    assert [o.status for o in outcomes] == [STORED, STORED]
    for path in (CT2[0], MR):
        assert stored_bytes(blobs, index, uids(path)) == path.read_bytes()


def test_a_commit_of_unknown_outcome_keeps_its_files(tmp_path: Path) -> None:
    """Lost answer and the index unreadable: the instances are reported failed (retry later), but
    their files stay, since they may be committed: undoing them could leave an instance without files."""
    store, index, blobs = make(tmp_path, index_type=UnavailableAfterCommit)
    assert isinstance(index, UnavailableAfterCommit)
    index.readable = False
    outcomes = store.store_instances(parts(CT2[0], MR))
    assert summary(outcomes) == [
        (FAILED, FailureReason.PROCESSING_FAILURE, uids(CT2[0]).instance),
        (FAILED, FailureReason.PROCESSING_FAILURE, uids(MR).instance),
    ]
    index.readable = True
    for path in (CT2[0], MR):
        assert stored_bytes(blobs, index, uids(path)) == path.read_bytes()


class TakenOverBeforeCommit(SqlMetadataIndex):
    """Between the batch's begin and its commit, another request takes one instance's pending row
    over (it took that store for a crashed one): the real commit_instances then answers Conflict
    for that item."""

    victim = ""
    winner: InstanceRecord | None = None

    def commit_instances(
        self, items: Sequence[tuple[InstanceRecord, PendingInstance]]
    ) -> list[Exception | None]:
        for record, _pending in items:
            if record.uids.instance == self.victim:
                self.winner = dataclasses.replace(record, version=new_version())
                self.begin_instance(self.winner, replace=False)
        return super().commit_instances(items)


def test_an_instance_that_loses_at_commit_is_a_duplicate_and_its_blobs_go(tmp_path: Path) -> None:
    store, index, _ = make(tmp_path, index_type=TakenOverBeforeCommit)
    assert isinstance(index, TakenOverBeforeCommit)
    victim = uids(CT2[2])
    index.victim = victim.instance
    outcomes = store.store_instances(parts(CT2[0], MR, CT2[2], CT2[3]))
    assert summary(outcomes) == [
        (STORED, None, uids(CT2[0]).instance),
        (STORED, None, uids(MR).instance),
        (FAILED, FailureReason.DUPLICATE_SOP_INSTANCE, victim.instance),
        (STORED, None, uids(CT2[3]).instance),
    ]
    files = on_disk(tmp_path / "blobs")
    assert [f for f in files if f.startswith(folder(victim))] == []
    assert len(files) == 3 * BLOBS
    assert index.find_instances(victim.study, victim.series, victim.instance) == []
    assert sorted(s.uids.instance for s in index.find_instances(victim.study)) == sorted(
        uids(p).instance for p in (CT2[0], CT2[3])
    )
    assert len(index.find_instances(uids(MR).study)) == 1
    # The loser's undo left the winner's pending row alone.
    assert index.winner is not None
    assert index_rows(tmp_path, victim) == [(PENDING, index.winner.version)]

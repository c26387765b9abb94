"""The Table index's change feed beyond the contract: what a writer that dies between the study
transaction and the feed append leaves behind is appended by the next sweep, exactly once;
an intent whose change never committed appends nothing; concurrent writers in many studies get
one gap-free sequence with times that grow with it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters import index_table_changes as feed
from shared.adapters.index_table import TableMetadataIndex
from shared.core.changefeed import ChangeAction, ChangeFeedQuery, ChangeState
from shared.core.model import InstanceRecord, InstanceUids
from tests.contract.records import make_record, uid
from tests.services import azurite


class Died(Exception):
    """The process stopped here."""


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"f{uuid.uuid4().hex[:16]}"
    yield name
    with TableServiceClient.from_connection_string(azurite()) as service:
        for table in ("Studies", "Uids", "Keys", "Changes"):
            service.delete_table(name + table)


@pytest.fixture
def index(prefix: str) -> Iterator[TableMetadataIndex]:
    found = TableMetadataIndex.from_connection_string(azurite(), prefix=prefix)
    yield found
    found.close()


def rows(prefix: str, table: str, start: str) -> list[dict[str, Any]]:
    with TableServiceClient.from_connection_string(azurite()) as service:
        found = service.get_table_client(prefix + table).list_entities()
        return [dict(e) for e in found if e["RowKey"].startswith(start)]


def record(study: str | None = None) -> InstanceRecord:
    study = study or uid()
    return make_record(InstanceUids(study, study + ".1", uid()), PatientName="Feed^Table")


def store(index: TableMetadataIndex, rec: InstanceRecord) -> None:
    index.commit_instance(rec, index.begin_instance(rec, replace=False))


def feed_of(index: TableMetadataIndex) -> list[Any]:
    return index.read_changes(ChangeFeedQuery(limit=200))


def die(*_args: Any) -> bool:
    raise Died


@pytest.fixture
def sweep_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweeps take over intents of any age (by default they leave young ones to their writers)."""
    monkeypatch.setattr(feed, "SWEEP_AFTER", timedelta(0))


def test_a_commit_whose_writer_died_reaches_the_feed_on_the_next_sweep(
    index: TableMetadataIndex, prefix: str, monkeypatch: pytest.MonkeyPatch, sweep_now: None
) -> None:
    before, lost, after = record(), record(), record()
    store(index, before)
    with monkeypatch.context() as patch:
        patch.setattr(feed, "_append", die)  # the writer dies after the study transaction
        with pytest.raises(Died):
            store(index, lost)
    assert index.find_instances(lost.uids.study) != []  # committed ...
    assert [e.uids for e in feed_of(index)] == [before.uids]  # ... but not in the feed yet
    store(index, after)
    unpublished = index.unpublished_changes(10)  # the publisher's path sweeps first
    # a recovered change comes after those committed after it
    assert [e.uids for e in unpublished] == [before.uids, after.uids, lost.uids]
    assert [e.state for e in unpublished] == [ChangeState.CURRENT] * 3
    assert rows(prefix, "Studies", "X|") == [] and rows(prefix, "Changes", "P|") == []
    assert index.unpublished_changes(10) == unpublished  # appended once, not again


def test_a_delete_whose_writer_died_is_recovered(
    index: TableMetadataIndex, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = uid()
    records = [record(study) for _ in range(3)]
    for rec in records:
        store(index, rec)
    monkeypatch.setattr(feed, "_append", die)
    with pytest.raises(Died):
        index.delete(study)
    monkeypatch.undo()
    assert index.find_instances(study) == []
    assert [e.action for e in feed_of(index)] == [ChangeAction.CREATE] * 3
    assert feed.sweep(index._scope, timedelta(0)) == 1
    entries = feed_of(index)
    assert [e.action for e in entries] == [ChangeAction.CREATE] * 3 + [ChangeAction.DELETE] * 3
    assert {e.uids for e in entries[3:]} == {r.uids for r in records}
    assert {e.state for e in entries} == {ChangeState.DELETED}
    assert feed.sweep(index._scope, timedelta(0)) == 0
    assert rows(prefix, "Studies", "") == []


def test_concurrent_sweeps_append_a_left_over_change_once(
    index: TableMetadataIndex, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "publish", lambda *a: None)  # the writer leaves it all to the sweep
    store(index, record())
    monkeypatch.undo()
    clients = [TableMetadataIndex.from_connection_string(azurite(), prefix=prefix) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda c: feed.sweep(c._scope, timedelta(0)), clients))
    assert sum(done) >= 1 and len(feed_of(index)) == 1
    for client in clients:
        client.close()


def test_an_intent_whose_change_never_committed_appends_nothing_and_is_dropped_late(
    index: TableMetadataIndex, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed.intend(index._scope, uid())  # then the writer died before its study transaction
    assert feed.sweep(index._scope, timedelta(0)) == 0
    assert len(rows(prefix, "Changes", "P|")) == 1  # young: its commit may still be running
    monkeypatch.setattr(feed, "DISCARD_AFTER", timedelta(0))
    assert feed.sweep(index._scope, timedelta(0)) == 0
    assert rows(prefix, "Changes", "P|") == [] and feed_of(index) == []


def test_a_conflicting_store_leaves_no_intent(index: TableMetadataIndex, prefix: str) -> None:
    rec = record()
    first = index.begin_instance(rec, replace=False)
    index.abort_instance(first)
    with pytest.raises(Exception):  # noqa: B017 - Conflict: the pending store is gone
        index.commit_instance(rec, first)
    assert rows(prefix, "Changes", "P|") == [] and feed_of(index) == []


def test_concurrent_writers_in_many_studies_share_one_gap_free_sequence(prefix: str) -> None:
    clients = [TableMetadataIndex.from_connection_string(azurite(), prefix=prefix) for _ in range(8)]
    studies = [uid() for _ in range(4)]
    records = [record(studies[n % 4]) for n in range(32)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store(clients[n % 8], records[n]), range(32)))
    entries = feed_of(clients[0])
    assert [e.sequence for e in entries] == list(range(1, 33))
    assert all(a.timestamp < b.timestamp for a, b in pairwise(entries))
    assert {e.uids for e in entries} == {r.uids for r in records}
    latest = max(e.timestamp for e in entries) + timedelta(microseconds=1)
    due = clients[1].quiet_studies(latest, 10)
    last = {e.uids.study: e.sequence for e in entries}
    assert [(s, n) for s, n, _ in due] == sorted(last.items(), key=lambda item: item[1])
    for client in clients:
        client.close()

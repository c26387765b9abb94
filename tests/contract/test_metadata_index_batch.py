"""MetadataIndex contract, the batch calls: begin_instances / commit_instances on every adapter in
conftest.INDEXES.

InstanceStore.store_instances begins a batch of instances with one begin_instances, writes their
files, and commits those that were begun with one commit_instances. Each item must get the answer
begin_instance / commit_instance would have given it alone, in order, and one item's failure must
never decide another's; neither call ever raises. On SQL each call is one write transaction.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text

from shared.adapters.index_sql import SqlMetadataIndex
from shared.adapters.index_sql import _now as index_now
from shared.adapters.index_sql_schema import make_engine
from shared.core.attributes import Level
from shared.core.changefeed import ChangeAction, ChangeFeedEntry, ChangeFeedQuery
from shared.core.errors import Conflict, Unavailable
from shared.core.model import InstanceRecord, InstanceUids, PendingInstance, StoredInstance
from shared.core.ports import MetadataIndex
from tests.contract.conftest import INDEXES, ConnectIndex
from tests.contract.records import make_record, new_version, query, stored, uid
from tests.contract.test_metadata_index import EVERYWHERE, NOWHERE, counts, visible

STUDY_A, STUDY_B = uid(41), uid(42)
A1, A2, B1 = uid(41, 1), uid(41, 2), uid(42, 1)


def record(study: str, series: str, number: int, instance: str | None = None) -> InstanceRecord:
    return make_record(
        InstanceUids(study, series, instance or uid()),
        PatientName="Batch^Pat",
        PatientID="PID-B",
        StudyDate="20240305",
        Modality="CT" if study == STUDY_A else "MR",
        SeriesNumber=1,
        InstanceNumber=number,
    )


def again(rec: InstanceRecord) -> InstanceRecord:
    """The same instance sent again (a retry, or a new version): a new version token."""
    return dataclasses.replace(rec, version=new_version(), size=rec.size + 1)


def pending(rec: InstanceRecord, replaces: str | None = None) -> PendingInstance:
    return PendingInstance(rec.uids, rec.version, replaces)


def feed(index: MetadataIndex) -> list[ChangeFeedEntry]:
    return index.read_changes(ChangeFeedQuery(limit=100))


def by_uid(index: MetadataIndex, study: str) -> list[StoredInstance]:
    return sorted(index.find_instances(study), key=lambda s: s.uids.instance)


def all_pending(begun: list[PendingInstance | Exception]) -> list[PendingInstance]:
    assert kinds(begun) == ["PendingInstance"] * len(begun)
    return [p for p in begun if isinstance(p, PendingInstance)]


def kinds(results: list[PendingInstance | Exception] | list[Exception | None]) -> list[str]:
    return [type(r).__name__ for r in results]


def interleaved_batch() -> list[InstanceRecord]:
    """Six new instances over two studies and three series, the studies interleaved."""
    return [
        record(STUDY_A, A1, 1),
        record(STUDY_B, B1, 1),
        record(STUDY_A, A2, 1),
        record(STUDY_A, A1, 2),
        record(STUDY_B, B1, 2),
        record(STUDY_A, A1, 3),
    ]


# --- a batch of new instances ---------------------------------------------------------------------


def test_a_batch_of_new_instances_begins_in_order_and_commits_together(index: MetadataIndex) -> None:
    recs = interleaved_batch()
    begun = all_pending(index.begin_instances(recs, replace=False))
    assert begun == [pending(rec) for rec in recs]
    for rec in recs:
        assert visible(index, rec) == NOWHERE  # begun is not yet stored
    committed = index.commit_instances(list(zip(recs, begun, strict=True)))
    assert committed == [None] * len(recs)
    for rec in recs:
        assert visible(index, rec) == EVERYWHERE
        assert index.find_instances(rec.uids.study, rec.uids.series, rec.uids.instance) == [stored(rec)]
    for study in (STUDY_A, STUDY_B):
        assert by_uid(index, study) == sorted(
            (stored(r) for r in recs if r.uids.study == study), key=lambda s: s.uids.instance
        )
    assert counts(index, STUDY_A) == (2, 4)
    assert counts(index, STUDY_B) == (1, 2)
    series_counts = {
        hit.series: hit.attrs["00201209"]["Value"][0] for hit in index.search(query(Level.SERIES))
    }
    assert series_counts == {A1: 3, A2: 1, B1: 2}
    assert {h.study for h in index.search(query(Level.STUDY, "PatientID=PID-B"))} == {STUDY_A, STUDY_B}
    assert len(index.search(query(Level.INSTANCE, "PatientID=PID-B"))) == len(recs)
    entries = feed(index)
    assert [(e.action, e.uids, e.version) for e in entries] == [
        (ChangeAction.CREATE, rec.uids, rec.version) for rec in recs
    ]
    sequences = [e.sequence for e in entries]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(recs)


def test_empty_batches_answer_nothing(index: MetadataIndex) -> None:
    assert index.begin_instances([], replace=False) == []
    assert index.commit_instances([]) == []
    assert feed(index) == []


# --- begin: each item gets its own answer -------------------------------------------------------


@pytest.mark.parametrize("replace", [False, True], ids=["create", "replace"])
def test_a_begin_batch_answers_each_item_as_begin_instance_would(
    connect_index: ConnectIndex, replace: bool
) -> None:
    index, crashed = connect_index(), connect_index()
    existing = record(STUDY_A, A1, 1)
    elsewhere = record(STUDY_B, B1, 1)
    for rec in (existing, elsewhere):
        index.commit_instance(rec, index.begin_instance(rec, replace=False))
    abandoned = record(STUDY_A, A1, 3)
    stale = crashed.begin_instance(abandoned, replace=False)  # ... and that process died
    batch = [
        record(STUDY_A, A1, 2),  # new
        again(existing),  # committed already
        record(STUDY_A, A2, 1, instance=elsewhere.uids.instance),  # this UID lives in another study
        again(abandoned),  # a pending row nobody will commit
        record(STUDY_A, A2, 2),  # new
    ]
    begun = index.begin_instances(batch, replace=replace)
    assert len(begun) == len(batch)
    assert begun[0] == pending(batch[0])
    if replace:
        assert begun[1] == pending(batch[1], replaces=existing.version)
    else:
        assert isinstance(begun[1], Conflict)
    assert isinstance(begun[2], Conflict)
    assert begun[3] == pending(batch[3])  # taken over: nothing committed to replace
    assert begun[4] == pending(batch[4])

    # Nothing is visible yet; what was there is as it was.
    assert index.find_instances(STUDY_A) == [stored(existing)]
    assert index.find_instances(STUDY_B) == [stored(elsewhere)]
    assert visible(index, batch[0]) == {"study": True, "series": True, "instance": False, "find": False}
    assert visible(index, batch[4]) == {"study": True, "series": False, "instance": False, "find": False}

    ready = [(rec, p) for rec, p in zip(batch, begun, strict=True) if isinstance(p, PendingInstance)]
    assert index.commit_instances(ready) == [None] * len(ready)
    live = batch[1] if replace else existing
    assert by_uid(index, STUDY_A) == sorted(
        [stored(live), stored(batch[0]), stored(batch[3]), stored(batch[4])], key=lambda s: s.uids.instance
    )
    assert index.find_instances(STUDY_B) == [stored(elsewhere)]  # the moved UID stayed where it was
    assert index.find_instances(STUDY_A, A2, elsewhere.uids.instance) == []
    assert counts(index, STUDY_A) == (2, 4)
    with pytest.raises(Conflict):  # the crashed writer woke up: it lost
        crashed.commit_instance(abandoned, stale)
    assert index.find_instances(STUDY_A, A1, abandoned.uids.instance) == [stored(batch[3])]
    entries = feed(index)
    assert [e.uids for e in entries[:2]] == [existing.uids, elsewhere.uids]
    changes = [(e.action, e.uids.instance, e.version) for e in entries[2:]]
    assert changes == [
        (ChangeAction.REPLACE if rec is batch[1] else ChangeAction.CREATE, rec.uids.instance, rec.version)
        for rec, _ in ready
    ]


# --- commit: one lost item does not take the others down ----------------------------------------


@pytest.mark.parametrize("lost", [0, 1, 2], ids=["first", "middle", "last"])
def test_a_commit_batch_item_whose_pending_was_taken_over_alone_fails(
    connect_index: ConnectIndex, lost: int
) -> None:
    index, other = connect_index(), connect_index()
    recs = [record(STUDY_A, A1, 1), record(STUDY_A, A2, 1), record(STUDY_B, B1, 1)]
    begun = all_pending(index.begin_instances(recs, replace=False))
    # Another request takes the pending row over (it took this store for a crashed one).
    winner = again(recs[lost])
    winner_pending = other.begin_instance(winner, replace=False)

    committed = index.commit_instances(list(zip(recs, begun, strict=True)))
    assert len(committed) == len(recs)
    assert isinstance(committed[lost], Conflict)
    assert [c for n, c in enumerate(committed) if n != lost] == [None, None]
    kept = [rec for n, rec in enumerate(recs) if n != lost]
    for rec in kept:
        assert visible(index, rec) == EVERYWHERE
        assert index.find_instances(rec.uids.study, rec.uids.series, rec.uids.instance) == [stored(rec)]
    u = recs[lost].uids
    assert index.find_instances(u.study, u.series, u.instance) == []
    assert index.search(query(Level.INSTANCE, f"SOPInstanceUID={u.instance}")) == []
    assert index.search(query(Level.SERIES, f"SeriesInstanceUID={u.series}")) == []  # alone in it
    assert [(e.uids, e.version) for e in feed(index)] == [(rec.uids, rec.version) for rec in kept]

    # The winner's pending row was left alone: it commits.
    other.commit_instance(winner, winner_pending)
    assert index.find_instances(u.study, u.series, u.instance) == [stored(winner)]


# --- never raises: an unreachable index -------------------------------------------------------


@dataclasses.dataclass
class Outage:
    index: MetadataIndex  # a client of an index that has been working
    cut: Callable[[], None]  # from now on its database cannot be reached


def _warm(index: MetadataIndex) -> None:
    """The host has served a store (connections pooled, lock files open) before the outage."""
    rec = record(STUDY_A, A1, 99)
    index.commit_instance(rec, index.begin_instance(rec, replace=False))


@contextmanager
def _sqlite_outage(workdir: Path) -> Iterator[Outage]:
    """The folder of the database file (a mounted volume) goes away; connections are reopened."""
    volume = workdir / "volume"
    volume.mkdir()
    url = f"sqlite:///{volume}/i.sqlite3"
    engine = make_engine(url)
    index = SqlMetadataIndex(url, engine=engine)
    _warm(index)

    def cut() -> None:
        shutil.rmtree(volume)
        engine.dispose()  # the pooled connections would write on into the unlinked file

    try:
        yield Outage(index, cut)
    finally:
        engine.dispose()


@contextmanager
def _postgresql_outage(workdir: Path) -> Iterator[Outage]:
    """The database is dropped under the host's open connections (the server answers, it does not)."""
    from tests.services import fresh_postgres_database, postgres_server

    url = fresh_postgres_database()
    engine = make_engine(url)
    index = SqlMetadataIndex(url, engine=engine)
    _warm(index)

    def cut() -> None:
        admin = create_engine(postgres_server(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{engine.url.database}" WITH (FORCE)'))
        finally:
            admin.dispose()

    try:
        yield Outage(index, cut)
    finally:
        engine.dispose()


@contextmanager
def _table_outage(workdir: Path) -> Iterator[Outage]:
    """The storage account's endpoint refuses connections: a port bound here that never listens.
    (Tables are made on first use, so the index has never reached it.) No SDK retries: a refusal
    is final at once rather than after the retry policy's back-off."""
    from shared.adapters.index_table import TableMetadataIndex
    from tests.services import azurite_connection_string

    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        conn = azurite_connection_string(port, port, port)
        index = TableMetadataIndex.from_connection_string(conn, prefix="outage", retry_total=0)
        try:
            yield Outage(index, lambda: None)
        finally:
            index.close()


OUTAGES: dict[str, Callable[[Path], AbstractContextManager[Outage]]] = {
    "sqlite": _sqlite_outage,
    "postgresql": _postgresql_outage,
    "azurite-table": _table_outage,
}


@pytest.fixture(params=[backend.name for backend in INDEXES])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    name: str = request.param
    if name not in OUTAGES:
        pytest.fail(f"say in OUTAGES how the {name!r} index is made unreachable")
    with OUTAGES[name](tmp_path) as made:
        yield made


def test_an_unreachable_index_answers_unavailable_for_every_item(outage: Outage) -> None:
    recs = interleaved_batch()
    outage.cut()
    begun = outage.index.begin_instances(recs, replace=False)
    assert kinds(begun) == ["Unavailable"] * len(recs)
    assert all(isinstance(r, Unavailable) for r in begun)
    # What an earlier begin handed out, committed after the outage began.
    committed = outage.index.commit_instances([(rec, pending(rec)) for rec in recs])
    assert kinds(committed) == ["Unavailable"] * len(recs)


# --- SQL: one write transaction per call ----------------------------------------------------------

SQL_BACKENDS = [backend.name for backend in INDEXES if backend.name in ("sqlite", "postgresql")]


@pytest.fixture(params=SQL_BACKENDS)
def sql_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, SqlMetadataIndex]]:
    """A SQL index on an engine of the test's own (to listen to), built as conftest builds them."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/i.sqlite3"
    else:
        from tests.services import fresh_postgres_database

        url = fresh_postgres_database()
    engine = make_engine(url)
    try:
        yield engine, SqlMetadataIndex(url, engine=engine)
    finally:
        engine.dispose()


@contextmanager
def transactions(engine: Engine, index: SqlMetadataIndex) -> Iterator[list[bool]]:
    """Every transaction begun meanwhile, whether it was a write transaction: those begun through
    SQLAlchemy on `engine`, and the store path's own (`_store_tx`, on a pooled DB-API
    connection, always a write)."""
    begun: list[bool] = []

    def on_begin(conn: Connection) -> None:
        begun.append(bool(conn.get_execution_options().get("write")))

    store_tx = index._store_tx

    @contextmanager
    def counted_store_tx() -> Iterator[Any]:
        begun.append(True)
        with store_tx() as cursor:
            yield cursor

    event.listen(engine, "begin", on_begin)
    index._store_tx = counted_store_tx  # type: ignore[method-assign]
    try:
        yield begun
    finally:
        del index._store_tx
        event.remove(engine, "begin", on_begin)


def test_sql_a_batch_is_begun_in_one_write_transaction_and_committed_in_one(
    sql_engine: tuple[Engine, SqlMetadataIndex],
) -> None:
    engine, index = sql_engine
    recs = interleaved_batch()
    with transactions(engine, index) as at_begin:
        begun = all_pending(index.begin_instances(recs, replace=False))
    assert begun == [pending(rec) for rec in recs]
    assert at_begin == [True]
    with transactions(engine, index) as at_commit:
        committed = index.commit_instances(list(zip(recs, begun, strict=True)))
    assert committed == [None] * len(recs)
    assert at_commit == [True]
    assert len(feed(index)) == len(recs)


def test_sql_a_begin_batch_with_conflicts_is_still_one_transaction(
    sql_engine: tuple[Engine, SqlMetadataIndex],
) -> None:
    engine, index = sql_engine
    existing = record(STUDY_A, A1, 1)
    index.commit_instance(existing, index.begin_instance(existing, replace=False))
    batch = [record(STUDY_A, A1, 2), again(existing), record(STUDY_B, B1, 1)]
    with transactions(engine, index) as begun_tx:
        begun = index.begin_instances(batch, replace=False)
    assert kinds(begun) == ["PendingInstance", "Conflict", "PendingInstance"]
    assert begun_tx == [True]


def test_sqlite_whose_folder_is_gone_before_its_first_write_is_unavailable(tmp_path: Path) -> None:
    """A host that has only read (or not yet written) when the database's volume goes away: the
    writer lock file (`<database>.writelock`, opened on the first write) cannot be created, and
    that is Unavailable too, not an OSError (a 500)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    url = f"sqlite:///{volume}/i.sqlite3"
    engine = make_engine(url)
    try:
        index = SqlMetadataIndex(url, engine=engine)
        assert index.find_instances(STUDY_A) == []  # it works
        shutil.rmtree(volume)
        engine.dispose()
        recs = interleaved_batch()
        assert kinds(index.begin_instances(recs, replace=False)) == ["Unavailable"] * len(recs)
        committed = index.commit_instances([(rec, pending(rec)) for rec in recs])
        assert kinds(committed) == ["Unavailable"] * len(recs)
    finally:
        engine.dispose()


@pytest.fixture(params=SQL_BACKENDS)
def two_sql_indexes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SqlMetadataIndex, ...]]:
    """Two indexes on one database, each with its own engine, as two worker processes have."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/i.sqlite3"
    else:
        from tests.services import fresh_postgres_database

        url = fresh_postgres_database()
    engines = [make_engine(url), make_engine(url)]
    try:
        yield tuple(SqlMetadataIndex(url, engine=engine) for engine in engines)
    finally:
        for engine in engines:
            engine.dispose()


def _together(*calls: Callable[[], object]) -> list[object]:
    """Run the calls in threads released at the same moment; their results in order."""
    import threading

    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(k: int) -> None:
        barrier.wait()
        try:
            results[k] = calls[k]()
        except Exception as exc:  # reported in the result, so the assertion names it
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_sql_a_batch_over_two_studies_and_a_concurrent_commit_into_one_of_them_both_commit(
    two_sql_indexes: tuple[SqlMetadataIndex, SqlMetadataIndex],
) -> None:
    """On PostgreSQL a batch locks several studies' rows: every commit takes the change feed's
    lock before any row lock, so this never deadlocks (it did when the lock came last: the
    whole batch then failed as Unavailable)."""
    first, second = two_sql_indexes
    for study in (STUDY_A, STUDY_B):
        existing = record(study, uid(), 1)
        first.commit_instance(existing, first.begin_instance(existing, replace=False))
    for _ in range(8):
        batch = [record(STUDY_A, uid(), 1) for _ in range(20)] + [record(STUDY_B, B1, 1)]
        single = record(STUDY_B, B1, 2)
        begun = first.begin_instances(batch, replace=False)
        pending = second.begin_instance(single, replace=False)
        assert all(isinstance(p, PendingInstance) for p in begun)
        got_batch, got_single = _together(
            partial(first.commit_instances, list(zip(batch, begun, strict=True))),
            partial(second.commit_instance, single, pending),
        )
        assert got_single is None
        assert got_batch == [None] * len(batch)


def test_sql_two_begin_batches_of_the_same_instances_in_opposite_orders_both_answer(
    two_sql_indexes: tuple[SqlMetadataIndex, SqlMetadataIndex],
) -> None:
    """The pending rows are inserted in UID order whatever the batch order, so two batches that
    share instances wait for each other instead of deadlocking; the later one takes the pending
    rows over (as a retry of a crashed store would)."""
    first, second = two_sql_indexes
    for _ in range(8):
        shared = [uid() for _ in range(6)]
        forward = [record(STUDY_A, A1, n, instance=u) for n, u in enumerate(shared)]
        backward = [record(STUDY_A, A1, n, instance=u) for n, u in reversed(list(enumerate(shared)))]
        got = _together(
            partial(first.begin_instances, forward, replace=False),
            partial(second.begin_instances, backward, replace=False),
        )
        for results in got:
            assert isinstance(results, list)
            assert kinds(results) == ["PendingInstance"] * len(shared)


def invalidations(engine: Engine) -> list[object]:
    """The DB-API connections the engine's pool drops from now on (it will not hand them out again)."""
    dropped: list[object] = []
    event.listen(engine.pool, "invalidate", lambda dbapi_conn, _rec, _exc: dropped.append(dbapi_conn))
    return dropped


def test_sql_a_store_transaction_that_fails_on_the_database_is_undone_and_its_connection_dropped(
    sql_engine: tuple[Engine, SqlMetadataIndex],
) -> None:
    """The store path runs on pooled DB-API connections of its own: a database error inside its
    transaction rolls back what the transaction wrote, answers Unavailable, and the connection
    is not handed out again (the pool makes a new one); the index works on."""
    engine, index = sql_engine
    invalidated = invalidations(engine)
    rec = record(STUDY_A, A1, 1)
    now = index_now()
    with pytest.raises(Unavailable), index._store_tx() as cur:
        index._begin(cur, rec, index._bind_pending(rec, now), False, now)
        if engine.dialect.name == "sqlite":
            cur.execute("SELECT * FROM no_such_table")  # sqlite3.OperationalError
        else:  # psycopg's QueryCanceled is an OperationalError
            cur.execute("SET LOCAL statement_timeout = 1")
            cur.execute("SELECT pg_sleep(1)")
    assert len(invalidated) == 1
    assert index.find_instances(STUDY_A) == []
    again = index.begin_instance(rec, replace=False)  # the pending row did not survive either
    index.commit_instance(rec, again)
    assert [found.uids for found in index.find_instances(STUDY_A)] == [rec.uids]


def test_sql_an_error_raised_inside_a_store_transaction_undoes_it_and_keeps_the_connection(
    sql_engine: tuple[Engine, SqlMetadataIndex],
) -> None:
    engine, index = sql_engine
    invalidated = invalidations(engine)
    rec = record(STUDY_A, A1, 1)
    now = index_now()
    with pytest.raises(Conflict), index._store_tx() as cur:
        index._begin(cur, rec, index._bind_pending(rec, now), False, now)
        raise Conflict("decided by the caller after writing")
    assert invalidated == []
    begun = index.begin_instance(rec, replace=False)
    assert begun == pending(rec)


def test_sqlite_a_store_waiting_for_its_turn_holds_no_pooled_connection(tmp_path: Path) -> None:
    """SQLite: a store that waits for another writer of its process waits before it takes a
    connection from the pool, so waiting writers do not use up the pool that searches read from;
    it stores once the turn is free."""
    import threading

    url = f"sqlite:///{tmp_path}/i.sqlite3"
    engine = make_engine(url)
    index = SqlMetadataIndex(url, engine=engine)
    rec = record(STUDY_A, A1, 1)
    writer = index._writer
    done = threading.Event()
    writer.take_turn()
    try:
        store = threading.Thread(
            target=lambda: (index.commit_instance(rec, index.begin_instance(rec, replace=False)), done.set())
        )
        store.start()
        store.join(0.3)
        assert not done.is_set(), "the store waits for the turn"
        assert engine.pool.checkedout() == 0
    finally:
        writer.end_turn()
    store.join(10)
    assert done.is_set()
    assert [found.uids for found in index.find_instances(STUDY_A)] == [rec.uids]
    engine.dispose()

"""SqliteWriterLock: writers of one SQLite file take turns (threads and separate lock objects, as
worker processes hold), without SQLite's sleeping busy handler."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from shared.adapters.index_sql_schema import NoWriterLock, SqliteWriterLock, writer_lock
from shared.core.errors import Unavailable


def _overlaps(locks: list[SqliteWriterLock], rounds: int = 200) -> int:
    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def work(lock: SqliteWriterLock) -> None:
        nonlocal inside, overlaps
        for _ in range(rounds):
            with lock:
                with guard:
                    inside += 1
                    overlaps += inside > 1
                time.sleep(0)  # let another thread try to get in
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return overlaps


def test_threads_sharing_one_lock_never_overlap(tmp_path: Path) -> None:
    lock = SqliteWriterLock(str(tmp_path / "index.sqlite3"))
    assert _overlaps([lock] * 4) == 0


def test_separate_lock_objects_on_one_file_exclude_each_other_as_processes_do(tmp_path: Path) -> None:
    database = str(tmp_path / "index.sqlite3")
    assert _overlaps([SqliteWriterLock(database) for _ in range(4)]) == 0


def _hold(
    database: str, held: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event
) -> None:
    with SqliteWriterLock(database):
        held.set()
        release.wait(10)


def test_a_lock_held_by_another_process_blocks_until_it_is_released(tmp_path: Path) -> None:
    database = str(tmp_path / "index.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(database, held, release))
    other.start()
    try:
        assert held.wait(30)
        acquired = threading.Event()
        lock = SqliteWriterLock(database)

        def take() -> None:
            with lock:
                acquired.set()

        waiter = threading.Thread(target=take)
        waiter.start()
        assert not acquired.wait(0.3), "the other process holds the lock"
        release.set()
        assert acquired.wait(10)
        waiter.join()
    finally:
        release.set()
        other.join(10)


def test_the_lock_is_reentrant_within_a_thread(tmp_path: Path) -> None:
    lock = SqliteWriterLock(str(tmp_path / "index.sqlite3"))
    with lock, lock:
        pass
    other = SqliteWriterLock(str(tmp_path / "index.sqlite3"))
    got = threading.Event()
    t = threading.Thread(target=lambda: (other.__enter__(), got.set(), other.__exit__(None, None, None)))
    t.start()
    t.join(5)
    assert got.is_set(), "released once the outermost holder left"


def test_only_a_sqlite_file_gets_a_lock(tmp_path: Path) -> None:
    assert isinstance(writer_lock(create_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")), SqliteWriterLock)
    assert isinstance(writer_lock(create_engine("sqlite://")), NoWriterLock)
    assert isinstance(writer_lock(create_engine("postgresql+psycopg://u@127.0.0.1/db")), NoWriterLock)


def test_the_turn_of_one_process_does_not_hold_up_another_only_its_file_lock_does(tmp_path: Path) -> None:
    """The two halves: a thread's turn excludes the other threads of its process (the same lock
    object) but not another process (another object on the file); the file lock excludes both."""
    database = str(tmp_path / "index.sqlite3")
    mine, other = SqliteWriterLock(database, timeout=0.2), SqliteWriterLock(database, timeout=0.2)
    mine.take_turn()
    try:
        with other:  # another process writes while this one only has its turn
            pass
        blocked: list[BaseException] = []
        sibling = threading.Thread(target=lambda: _catch(blocked, mine.take_turn))
        sibling.start()
        sibling.join()
        assert [type(e) for e in blocked] == [Unavailable], "a sibling thread waits for the turn"
        mine.lock_file()
        try:
            with pytest.raises(Unavailable), other:
                pass
        finally:
            mine.unlock_file()
        with other:  # the file lock let go, the turn still held
            pass
    finally:
        mine.end_turn()
    with mine:
        pass


def _catch(errors: list[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as exc:
        errors.append(exc)


def test_a_writer_gives_up_as_unavailable_when_the_lock_stays_held(tmp_path: Path) -> None:
    """Like SQLite's busy timeout: a holder that never lets go (a stopped worker) is a 503, not a hang."""
    database = str(tmp_path / "index.sqlite3")
    holder = SqliteWriterLock(database)
    waiter = SqliteWriterLock(database, timeout=0.2)
    with holder, pytest.raises(Unavailable), waiter:
        pass
    with waiter:  # free again
        pass


def test_the_lock_file_descriptor_is_closed_with_its_lock(tmp_path: Path) -> None:
    import gc
    import os

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for n in range(20):
        lock = SqliteWriterLock(str(tmp_path / f"index{n}.sqlite3"))
        with lock:
            pass
        del lock
    gc.collect()
    assert open_fds() <= before

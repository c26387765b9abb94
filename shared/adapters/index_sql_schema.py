"""Schema and engine of the SQL metadata index (SQLAlchemy Core; SQLite by default, PostgreSQL too)."""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
import time
import weakref
from typing import Any

try:  # POSIX; elsewhere writers of one process still take turns, and SQLite's busy handler does the rest
    import fcntl
except ImportError:  # pragma: no cover - not on the CI's Linux
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    text,
)

from shared.core.errors import Unavailable

metadata = MetaData()

PENDING = 0
CREATED = 1

studies = Table(
    "studies",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("partition", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("patient_name", String(324)),
    Column("patient_name_norm", String(324)),
    Column("patient_name_groups", String(340)),
    Column("patient_id", String(64)),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("study_date", String(8)),
    Column("study_time", String(16)),
    Column("accession_number", String(16)),
    Column("referring_physician_name", String(324)),
    Column("referring_physician_norm", String(324)),
    Column("referring_physician_groups", String(340)),
    Column("study_id", String(16)),
    Column("study_description", String(64)),
    Column("attrs", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("partition", "study_uid", name="uq_studies_uid"),
    Index("ix_studies_patient_id", "partition", "patient_id"),
    Index("ix_studies_accession", "partition", "accession_number"),
    Index("ix_studies_date", "partition", "study_date", "id"),
    # text_pattern_ops: PostgreSQL serves `LIKE 'PREFIX%'` from the index whatever the collation.
    Index(
        "ix_studies_name",
        "partition",
        "patient_name_norm",
        postgresql_ops={"patient_name_norm": "text_pattern_ops"},
    ),
    Index(
        "ix_studies_referring",
        "partition",
        "referring_physician_norm",
        postgresql_ops={"referring_physician_norm": "text_pattern_ops"},
    ),
)

# PostgreSQL: the study list order (newest date first, undated last, then newest row) read from an
# index, so the study list and deep pages are not a sort of every study (EXPLAIN at 1M instances: a
# parallel seq scan and a 20 MB external sort, 96 / 222 ms; with it, an index scan, 6 ms at offset
# 5000). SQLite already serves this order by walking ix_studies_date backwards (NULLs sort first).
Index(
    "ix_studies_order",
    studies.c.partition,
    studies.c.study_date.desc().nulls_last(),
    studies.c.id.desc(),
).ddl_if(dialect="postgresql")

series = Table(
    "series",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("study_pk", ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", String(64)),
    Column("pps_start_date", String(8)),
    Column("pps_start_time", String(16)),
    Column("attrs", JSON, nullable=False),
    UniqueConstraint("study_pk", "series_uid", name="uq_series_uid"),
    Index("ix_series_uid", "series_uid"),
    Index("ix_series_modality", "modality", "study_pk"),
)

# One row per word of a person name (patient 'P', referring physician 'R'): fuzzy matching is a
# prefix range scan of this index instead of a scan of every study.
name_words = Table(
    "name_words",
    metadata,
    Column("study_pk", ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(1), nullable=False),
    Column("word", String(64), nullable=False),
    Index("ix_name_words", "kind", "word", "study_pk", postgresql_ops={"word": "text_pattern_ops"}),
    Index("ix_name_words_study", "study_pk"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("partition", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("study_pk", ForeignKey("studies.id", ondelete="CASCADE")),
    Column("series_pk", ForeignKey("series.id", ondelete="CASCADE")),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("status", SmallInteger, nullable=False),
    Column("version", String(32), nullable=False),
    Column("pending_version", String(32)),
    Column("transfer_syntax", String(64), nullable=False),
    Column("number_of_frames", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("attrs", JSON),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("partition", "sop_instance_uid", name="uq_instances_uid"),
    Index("ix_instances_series", "series_pk", "status"),
    Index("ix_instances_uids", "partition", "study_uid", "series_uid"),
    # series_pk too: the per-study counts of a study search (count(DISTINCT series_pk), count(*))
    # are then served from the index alone, with no read of the wide instance rows.
    Index("ix_instances_study_series", "study_pk", "status", "series_pk"),
)


# The change feed: appended in the same transaction as the change; `sequence` is commit order
# (SQLite serialises writers; on PostgreSQL an advisory lock serialises the appends).
changes = Table(
    "changes",
    metadata,
    Column("sequence", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("partition", String(64), nullable=False),
    Column("action", String(8), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("published", Boolean, nullable=False, default=False),
    Index("ix_changes_time", "partition", "timestamp"),
    Index("ix_changes_unpublished", "published", "sequence"),
    sqlite_autoincrement=True,
)

# Study-stable announcements (index_sql_stability): per study, the change sequence it was last
# announced stable at. The row with study_uid "" (never a UID) holds the partition's watermark: every
# change up to it is settled, so the search for quiet studies reads only the changes after it.
study_stability = Table(
    "study_stability",
    metadata,
    Column("partition", String(64), primary_key=True),
    Column("study_uid", String(64), primary_key=True),
    Column("announced_sequence", BigInteger, nullable=False),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the begin hook below issue BEGIN
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    # Switching a new database to WAL needs it to itself, and SQLite answers "locked" at once
    # rather than waiting when another connection (another worker process starting) is in it.
    for attempt in itertools.count(1):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt >= 100:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock up front, so two writers never deadlock upgrading a read lock.
    # Straight on the driver's connection: SQLAlchemy's execution of a fixed statement costs more
    # than SQLite's BEGIN itself. (The store path begins its own transactions the same way.)
    mode = "IMMEDIATE" if conn.get_execution_options().get("write") else "DEFERRED"
    conn.connection.driver_connection.execute(f"BEGIN {mode}")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Last in, first out: SQLite drops a connection's whole page cache when it begins a
        # transaction after another connection has written; the connection used last is warm.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, pool_use_lifo=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=8)
    _create_schema(engine)
    return engine


_SCHEMA_LOCK = 0x44574D31  # "DWM1": an advisory lock key of this schema's creation
# PostgreSQL: a lock held until the transaction ends, on a key (built once, used on hot paths too).
ADVISORY_XACT_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


def _create_schema(engine: Engine) -> None:
    """Create what is missing, one process at a time: worker processes that start together would
    otherwise both see a table missing and the second CREATE would fail."""
    with engine.connect() as conn:
        conn = conn.execution_options(write=True)  # SQLite: BEGIN IMMEDIATE takes the write lock
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(ADVISORY_XACT_LOCK, {"key": _SCHEMA_LOCK})
            metadata.create_all(conn)
            if engine.dialect.name == "sqlite":
                _seed_sqlite_statistics(conn.connection.driver_connection)


# SQLite's planner, without statistics, takes any index that gives the ORDER BY for free: a study
# search by accession number walked the whole study date index (2.4 ms at 3,000 studies, growing
# with the archive) rather than look the number up and sort the one study found (0.01 ms).
# PostgreSQL keeps statistics itself. These are the shape of an archive of a million studies
# (rows, then rows per distinct value of each leading column set of the index, as ANALYZE writes
# them): what matters is that an accession number, a UID or a patient ID selects a few rows and a
# partition all of them. They are written once, where sqlite_stat1 has nothing for these tables;
# an operator's ANALYZE replaces them with measured ones.
_SQLITE_STATISTICS: dict[tuple[str, tuple[str, ...]], str] = {
    ("studies", ("partition", "study_uid")): "1000000 1000000 1",
    ("studies", ("partition", "patient_id")): "1000000 1000000 3",
    ("studies", ("partition", "accession_number")): "1000000 1000000 1",
    ("studies", ("partition", "study_date", "id")): "1000000 1000000 500 1",
    ("studies", ("partition", "patient_name_norm")): "1000000 1000000 3",
    ("studies", ("partition", "referring_physician_norm")): "1000000 1000000 200",
    ("series", ("study_pk", "series_uid")): "4000000 4 1",
    ("series", ("series_uid",)): "4000000 1",
    ("series", ("modality", "study_pk")): "4000000 400000 2",
    ("name_words", ("kind", "word", "study_pk")): "8000000 4000000 20 1",
    ("name_words", ("study_pk",)): "8000000 8",
    ("instances", ("partition", "sop_instance_uid")): "100000000 100000000 1",
    ("instances", ("series_pk", "status")): "100000000 25 25",
    ("instances", ("partition", "study_uid", "series_uid")): "100000000 100000000 100 25",
    ("instances", ("study_pk", "status", "series_pk")): "100000000 100 100 25",
    ("changes", ("partition", "timestamp")): "100000000 100000000 1",
    ("changes", ("published", "sequence")): "100000000 50000000 1",
    ("study_stability", ("partition", "study_uid")): "1000000 1000000 1",
}


def _seed_sqlite_statistics(dbapi_conn: Any) -> None:
    """Write `_SQLITE_STATISTICS` into sqlite_stat1 for the indexes that have none (in the
    caller's write transaction), and have this connection's planner read them."""
    dbapi_conn.execute("ANALYZE sqlite_schema")  # creates sqlite_stat1 if missing, reads no table
    have = {row[0] for row in dbapi_conn.execute("SELECT DISTINCT tbl FROM sqlite_stat1")}
    rows = []
    for table in {table for table, _ in _SQLITE_STATISTICS} - have:
        for index in dbapi_conn.execute(f"PRAGMA index_list({table})").fetchall():
            name = index[1]
            columns = tuple(c[2] for c in dbapi_conn.execute(f"PRAGMA index_info({name})").fetchall())
            stat = _SQLITE_STATISTICS.get((table, columns))
            if stat is not None:
                rows.append((table, name, stat))
    if rows:
        dbapi_conn.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", rows)
        dbapi_conn.execute("ANALYZE sqlite_schema")  # reload: the planner reads them from here on


class SqliteWriterLock:
    """Writers of one SQLite file take turns here before BEGIN IMMEDIATE: threads on a lock, worker
    processes on an flock of `<database>.writelock`.

    SQLite's own busy handler makes a writer that finds the database locked sleep 1, 2, 5 ... up to
    100 ms before it tries again, however soon the lock is free: with several writers (threads or
    worker processes) that sleeping, not the writing, would set the pace. A writer waiting here
    tries again every half millisecond, and gives up like SQLite after `timeout` seconds (the index
    is then Unavailable: 503). Re-entrant within a thread.
    """

    _POLL_SECONDS = 0.0005

    def __init__(self, database: str, timeout: float = 30.0) -> None:
        self._path = f"{database}.writelock"
        self._timeout = timeout
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:  # its folder is gone (an unmounted volume): the index is down
                raise Unavailable("the index database is unavailable; retry later") from exc
            weakref.finalize(self, os.close, self._fd)
        return self._fd

    def _lock_file(self) -> None:
        if fcntl is None:
            return
        fd = self._open()
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Unavailable("the index database is busy; retry later") from None
                time.sleep(self._POLL_SECONDS)

    # The two halves, for a writer that does work between them (a pooled connection is taken
    # and returned inside this process's turn, outside the file lock that other processes wait on).
    def take_turn(self) -> None:
        """This process's turn: threads of one process wait on a lock, woken as soon as it is free."""
        if not self._thread_lock.acquire(timeout=self._timeout):
            raise Unavailable("the index database is busy; retry later")

    def end_turn(self) -> None:
        self._thread_lock.release()

    def lock_file(self) -> None:
        """The file lock, inside this thread's turn (re-entrant, as the turn is)."""
        if self._depth == 0:
            self._lock_file()
        self._depth += 1

    def unlock_file(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __enter__(self) -> None:
        self.take_turn()
        try:
            self.lock_file()
        except BaseException:
            self.end_turn()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            self.unlock_file()
        finally:
            self.end_turn()


class NoWriterLock(contextlib.nullcontext[None]):
    """The writer lock of a database that waits on its own locks: nothing to take."""

    def take_turn(self) -> None:
        pass

    def end_turn(self) -> None:
        pass

    def lock_file(self) -> None:
        pass

    def unlock_file(self) -> None:
        pass


def writer_lock(engine: Engine) -> SqliteWriterLock | NoWriterLock:
    """What a write transaction on `engine` holds around itself (nothing but for a SQLite file:
    PostgreSQL waits on its own locks without sleeping)."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        return SqliteWriterLock(database)
    return NoWriterLock()

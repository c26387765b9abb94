"""Worker processes that start together create the SQL schema once: none of them fails.

Threads stand in for the processes: each makes its own engine (its own connections) on the same
new database, as `python -m devhost` worker processes or Functions worker processes do.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import inspect

from shared.adapters.index_sql_schema import make_engine, metadata

STARTERS = 6


def _start_together(url: str) -> list[str]:
    barrier = threading.Barrier(STARTERS)

    def start(_: int) -> str:
        barrier.wait()
        try:
            make_engine(url).dispose()
            return "ok"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:200]

    with ThreadPoolExecutor(STARTERS) as pool:
        return list(pool.map(start, range(STARTERS)))


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("round_", range(5))
def test_sqlite_schema_is_created_once_by_starters_racing(tmp_path: Path, round_: int) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    assert _start_together(url) == ["ok"] * STARTERS
    assert _tables(url) == set(metadata.tables)


def test_postgresql_schema_is_created_once_by_starters_racing() -> None:
    from tests.services import fresh_postgres_database

    url = fresh_postgres_database()
    assert _start_together(url) == ["ok"] * STARTERS
    assert _tables(url) == set(metadata.tables)

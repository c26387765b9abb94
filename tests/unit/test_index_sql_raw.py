"""shared.adapters.index_sql_raw: a Core statement compiled once and run on the DB-API cursor
writes exactly what SQLAlchemy's own execution of it writes (same type processing)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, update

from shared.adapters.index_sql_raw import RawStatement
from shared.adapters.index_sql_schema import changes, instances, make_engine

NOW = datetime(2026, 12, 5, 22, 41, 7, 123456, tzinfo=UTC)
ROW: dict[str, Any] = {
    "partition": "default",
    "study_uid": "1.2.3",
    "series_uid": "1.2.3.4",
    "sop_instance_uid": "1.2.3.4.5",
    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
    "status": 0,
    "version": "abcdef0123456789",
    "transfer_syntax": "1.2.840.10008.1.2.1",
    "number_of_frames": 1,
    "size": 525_000,
    "attrs": {"00200013": {"vr": "IS", "Value": [7]}, "00080008": {"vr": "CS", "Value": ["ORIGINAL", "ü"]}},
    "updated_at": NOW,
}

CHANGE: dict[str, Any] = {
    "partition": "p",
    "action": "create",
    "study_uid": "1.2",
    "series_uid": "1.2.3",
    "sop_instance_uid": "1.2.3.4",
    "version": "v",
    "timestamp": NOW,
    "published": False,
}


def dump(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


@pytest.mark.parametrize(
    ("table", "row"),
    [
        (instances, ROW),
        (changes, CHANGE),
    ],
    ids=["instances (JSON, DateTime)", "changes (Boolean, DateTime)"],
)
def test_an_insert_writes_the_same_row_as_sqlalchemy(tmp_path: Path, table: Any, row: dict[str, Any]) -> None:
    core = _written(tmp_path / "core.sqlite3", table.name, lambda conn: conn.execute(table.insert(), row))
    raw = _written(
        tmp_path / "raw.sqlite3",
        table.name,
        lambda conn: RawStatement(table.insert(), conn.dialect).run(conn.connection.cursor(), row),
    )
    assert core == raw
    assert len(core) == 1


def _written(path: Path, table: str, write: Callable[[Connection], object]) -> list[tuple[Any, ...]]:
    """The rows of `table` after `write` ran in a transaction on a new index database at `path`."""
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn, conn.begin():
        write(conn)
    engine.dispose()
    return dump(path, table)


def test_literal_values_of_the_statement_are_bound_and_a_missing_value_is_an_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'i.sqlite3'}")
    stmt = (
        update(instances)
        .where(instances.c.sop_instance_uid == bindparam("w_sop"))
        .values(status=1, pending_version=None, version=bindparam("version"))
    )
    raw = RawStatement(stmt, engine.dialect)
    with engine.connect() as conn, conn.begin():
        conn.execute(instances.insert(), {**ROW, "pending_version": "p"})
        cursor = conn.connection.cursor()
        assert raw.run(cursor, {"w_sop": ROW["sop_instance_uid"], "version": "new"}).rowcount == 1
        with pytest.raises(KeyError, match="w_sop"):
            raw.run(cursor, {"version": "new"})
    engine.dispose()
    with sqlite3.connect(tmp_path / "i.sqlite3") as db:
        assert db.execute("SELECT status, pending_version, version FROM instances").fetchall() == [
            (1, None, "new")
        ]


def test_a_bound_insert_with_late_values_writes_the_same_row_as_sqlalchemy(tmp_path: Path) -> None:
    """`bind` processes the values at once (JSON encoded, times formatted); the late ones are
    processed when the bound statement runs, and the row is the one SQLAlchemy writes."""

    def bound_insert(conn: Connection) -> None:
        params = {**ROW, "attrs": dict(ROW["attrs"]), "updated_at": None}
        bound = RawStatement(instances.insert(), conn.dialect).bind(params, late=("updated_at",))
        params["attrs"]["00200013"] = {"vr": "IS", "Value": [8]}  # after binding: not written
        bound.run(conn.connection.cursor(), {"updated_at": NOW})

    core = _written(
        tmp_path / "core.sqlite3", "instances", lambda conn: conn.execute(instances.insert(), ROW)
    )
    assert _written(tmp_path / "bound.sqlite3", "instances", bound_insert) == core
    assert len(core) == 1


def test_a_bound_statement_runs_again_with_other_late_values(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'i.sqlite3'}")
    row = {**CHANGE, "timestamp": None, "version": None}
    bound = RawStatement(changes.insert(), engine.dialect).bind(row, late=("timestamp", "version"))
    with engine.connect() as conn, conn.begin():
        cursor = conn.connection.cursor()
        bound.run(cursor, {"timestamp": NOW, "version": "v1"})
        bound.run(cursor, {"timestamp": NOW.replace(microsecond=0), "version": "v2"})
    engine.dispose()
    with sqlite3.connect(tmp_path / "i.sqlite3") as db:
        assert db.execute("SELECT version, timestamp FROM changes ORDER BY sequence").fetchall() == [
            ("v1", "2026-12-05 22:41:07.123456"),
            ("v2", "2026-12-05 22:41:07.000000"),
        ]


def test_a_late_value_must_be_given_and_must_be_a_parameter_of_the_statement(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'i.sqlite3'}")
    stmt = update(instances).where(instances.c.sop_instance_uid == bindparam("w_sop")).values(status=1)
    raw = RawStatement(stmt, engine.dialect)
    with pytest.raises(KeyError, match="no_such"):
        raw.bind({"w_sop": "1.2"}, late=("no_such",))
    bound = raw.bind({}, late=("w_sop",))
    with engine.connect() as conn, conn.begin():
        cursor = conn.connection.cursor()
        with pytest.raises(KeyError, match="w_sop"):
            bound.run(cursor)
        with pytest.raises(KeyError, match="w_sop"):
            bound.run(cursor, {"other": 1})
        assert bound.run(cursor, {"w_sop": "1.2"}).rowcount == 0
    engine.dispose()

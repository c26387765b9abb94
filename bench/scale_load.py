"""Bulk loading of a generated archive into an index, bypassing HTTP and blobs.

SQL: rows are built with the adapter's own column builders (`study_columns`, `series_columns`, the
name-word rows as `index_sql.name_word_rows` makes them) and inserted with executemany in
big transactions, primary keys assigned here (so no RETURNING round trip); PostgreSQL's sequences
are moved past them afterwards. bench/tests/test_scale.py checks that the rows equal what the
store pipeline writes for the same instances.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from bench.scale_archive import Archive
from shared.adapters.index_sql_columns import (
    integer,
    name_word_rows,
    person_name,
    series_columns,
    study_columns,
)
from shared.adapters.index_sql_schema import CREATED, instances, make_engine, series, studies
from shared.adapters.index_sql_schema import name_words as words_table

log = logging.getLogger("bench.scale")

BATCH_INSTANCES = 20_000


@dataclass(frozen=True, slots=True)
class LoadStats:
    instances: int
    studies: int
    series: int
    seconds: float
    analyze_seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "studies": self.studies,
            "series": self.series,
            "seconds": round(self.seconds, 1),
            "instances_per_s": round(self.instances / self.seconds) if self.seconds else None,
            "analyze_seconds": round(self.analyze_seconds, 2),
        }


def word_rows(study_pk: int, attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """The name-word rows of a study, exactly as the SQL index writes them."""
    return name_word_rows(study_pk, person_name(attrs, "00100010", 324), person_name(attrs, "00080090", 324))


class SqlRows:
    """The rows of the four index tables for an archive, study by study, with their keys."""

    def __init__(self, partition: str = "default") -> None:
        self.partition = partition
        self.study_pk = 0
        self.series_pk = 0
        self.instance_pk = 0
        self.studies: list[dict[str, Any]] = []
        self.series: list[dict[str, Any]] = []
        self.words: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []

    def add_study(self, archive: Archive, index: int) -> None:
        study = archive.studies[index]
        now = datetime.now(UTC)
        self.study_pk += 1
        study_pk = self.study_pk
        series_pks: dict[str, int] = {}
        for record in archive.records(study):
            uids = record.uids
            if not series_pks:
                self.studies.append(
                    {
                        "id": study_pk,
                        "partition": self.partition,
                        "study_uid": uids.study,
                        "updated_at": now,
                        **study_columns(record.study_attrs),
                    }
                )
                self.words += word_rows(study_pk, record.study_attrs)
            series_pk = series_pks.get(uids.series)
            if series_pk is None:
                self.series_pk += 1
                series_pk = series_pks[uids.series] = self.series_pk
                self.series.append(
                    {
                        "id": series_pk,
                        "study_pk": study_pk,
                        "series_uid": uids.series,
                        **series_columns(record.series_attrs),
                    }
                )
            self.instance_pk += 1
            self.instances.append(
                {
                    "id": self.instance_pk,
                    "partition": self.partition,
                    "study_uid": uids.study,
                    "series_uid": uids.series,
                    "sop_instance_uid": uids.instance,
                    "study_pk": study_pk,
                    "series_pk": series_pk,
                    "sop_class_uid": record.sop_class_uid,
                    "instance_number": integer(record.instance_attrs, "00200013"),
                    "status": CREATED,
                    "version": record.version,
                    "pending_version": None,
                    "transfer_syntax": record.transfer_syntax,
                    "number_of_frames": record.number_of_frames,
                    "size": record.size,
                    "attrs": record.instance_attrs,
                    "updated_at": now,
                }
            )

    def flush(self, engine: Engine) -> None:
        with engine.connect() as conn:
            conn = conn.execution_options(write=True)
            with conn.begin():
                for table, rows in (
                    (studies, self.studies),
                    (words_table, self.words),
                    (series, self.series),
                    (instances, self.instances),
                ):
                    if rows:
                        conn.execute(table.insert(), rows)
        self.studies, self.series, self.words, self.instances = [], [], [], []


def load_sql(
    archive: Archive, url: str, progress: Callable[[int, float], None] | None = None
) -> tuple[Engine, LoadStats]:
    """Load the archive into the (empty) SQL index at `url`; ANALYZE; return the engine and timings."""
    engine = make_engine(url)
    rows = SqlRows()
    started = time.perf_counter()
    pending = 0
    for index in range(len(archive.studies)):
        rows.add_study(archive, index)
        pending += archive.studies[index].instance_count
        if pending >= BATCH_INSTANCES:
            rows.flush(engine)
            pending = 0
            if progress is not None:
                progress(rows.instance_pk, time.perf_counter() - started)
    rows.flush(engine)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("studies", "series", "instances"):
                sequence = f"pg_get_serial_sequence('{table}', 'id')"
                conn.execute(text(f"SELECT setval({sequence}, (SELECT max(id) FROM {table}))"))
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    analyze(engine)
    stats = LoadStats(rows.instance_pk, rows.study_pk, rows.series_pk, seconds, time.perf_counter() - started)
    return engine, stats


def analyze(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()

"""Bulk loading of a generated archive into the Azure Table index (Azurite), bypassing HTTP and blobs.

The rows are those `index_table_write.commit` leaves after storing every instance of a study, built
with the adapter's own helpers (`study_pk`, `instance_rk`, `series_rk`, `key_rows`, `dump_json`, the
study entity builder), written with `Tables.write_all`: one transaction per 100 rows of a partition,
16 in parallel. Azurite keeps everything in memory, so this is meant for 100k instances at most.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.scale_archive import Archive, Study
from bench.scale_load import LoadStats
from shared.adapters.index_table import TableMetadataIndex
from shared.adapters.index_table_rows import (
    CLAIM_RK,
    COMMITTED,
    first_number,
    instance_rk,
    key_rows,
    series_lookup_rk,
    series_rk,
    study_pk,
    uid_pk,
)
from shared.adapters.index_table_store import Entity, Tables, dump_json, key
from shared.adapters.index_table_write import _modalities, _study_entity, now

BATCH_INSTANCES = 5_000


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


def study_entities(archive: Archive, study: Study, partition: str) -> dict[str, list[Entity]]:
    """The rows of each table for a whole study, as the commits of its instances leave them."""
    part = key(partition)
    pk = study_pk(part, study.uid)
    out: dict[str, list[Entity]] = {Tables.STUDIES: [], Tables.UIDS: [], Tables.KEYS: []}
    counts: Counter[str] = Counter()
    study_attrs: dict[str, Any] = {}
    series_rows: dict[str, Entity] = {}
    created = now()
    for record in archive.records(study):
        u = record.uids
        study_attrs = record.study_attrs
        out[Tables.UIDS].append(
            {"PartitionKey": uid_pk(part, u.instance), "RowKey": CLAIM_RK, "st": u.study, "se": u.series}
        )
        inst: Entity = {
            "PartitionKey": pk,
            "RowKey": instance_rk(u.series, u.instance),
            "se": u.series,
            "sop": u.instance,
            "s": COMMITTED,
            "v": record.version,
            "cls": record.sop_class_uid,
            "ts": record.transfer_syntax,
            "nf": record.number_of_frames,
            "size": str(record.size),
            "num": _text(first_number(record.instance_attrs, "InstanceNumber")),
            "c": now(),
        }
        dump_json(inst, "a", record.instance_attrs)
        out[Tables.STUDIES].append(inst)
        series = series_rows.get(u.series)
        if series is None:
            mods = _modalities(record.series_attrs)
            series = {"PartitionKey": pk, "RowKey": series_rk(u.series), "se": u.series, "c": now(), "ni": 0}
            series["num"] = _text(first_number(record.series_attrs, "SeriesNumber"))
            dump_json(series, "mods", mods)
            dump_json(series, "a", record.series_attrs)
            series_rows[u.series] = series
            counts.update(mods)
            out[Tables.UIDS].append(
                {"PartitionKey": uid_pk(part, u.series), "RowKey": series_lookup_rk(u.study), "st": u.study}
            )
        series["ni"] += 1
    out[Tables.STUDIES] += series_rows.values()
    rows = key_rows(part, study.uid, created, study_attrs, dict(counts))
    entity = _study_entity(pk, study.uid, created, len(series_rows), study.instance_count, dict(counts), rows)
    dump_json(entity, "a", study_attrs)
    out[Tables.STUDIES].append(entity)
    out[Tables.KEYS] += rows.rows.values()
    return out


def load_table(
    archive: Archive,
    index: TableMetadataIndex,
    partition: str = "default",
    progress: Callable[[int, float], None] | None = None,
) -> LoadStats:
    tables: Tables = index._tables  # the adapter's own writer: batching, parallelism, error translation
    started = time.perf_counter()
    done = pending = 0
    batch: dict[str, list[Entity]] = {Tables.STUDIES: [], Tables.UIDS: [], Tables.KEYS: []}

    def flush() -> None:
        for name, entities in batch.items():
            tables.write_all(name, entities, [])
            entities.clear()

    for study in archive.studies:
        for name, entities in study_entities(archive, study, partition).items():
            batch[name] += entities
        pending += study.instance_count
        done += study.instance_count
        if pending >= BATCH_INSTANCES:
            flush()
            pending = 0
            if progress is not None:
                progress(done, time.perf_counter() - started)
    flush()
    n_series = sum(len(s.series) for s in archive.studies)
    return LoadStats(done, len(archive.studies), n_series, time.perf_counter() - started, 0.0)

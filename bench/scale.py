"""Scale benchmark: QIDO-RS latency on a generated archive of 100k-1M indexed instances, per index.

`.venv/bin/python -m bench.scale --instances 100000 --backends sqlite,postgresql [--quick]`

For each size, the archive is generated once (bench/scale_archive.py) and bulk-loaded into each
backend (bench/scale_load.py, no HTTP, no blobs); then every query kind of bench/scale_queries.py
runs N times in process, through `parse_query` + the adapter's `search` and through
`DicomwebService.search` (result shaping included). The JSON goes to stdout and to
bench/results/scale-<timestamp>.json, a table to stderr. Exit code 0 only if every count was right.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, event, text

from bench.load import percentile
from bench.run import RESULTS_DIR, host_info
from bench.scale_archive import Archive
from bench.scale_load import load_sql
from bench.scale_queries import KINDS, PlannedQuery, Truth, build_queries
from shared.adapters.index_sql import SqlMetadataIndex
from shared.adapters.index_sql_schema import make_engine
from shared.core.model import SearchHit
from shared.core.ports import BlobStore, MetadataIndex
from shared.core.query import parse_query
from shared.core.service import DicomwebService
from shared.core.store import InstanceStore

log = logging.getLogger("bench.scale")
BASE = "http://bench/dicomweb"
TABLE_MAX = 110_000


class NoBlobs:
    """Search results must never read blobs: any use is an error the run reports."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"QIDO-RS touched the blob store ({name})")


def index_search(index: MetadataIndex, planned: PlannedQuery) -> list[SearchHit]:
    query = parse_query(
        planned.level, planned.params, study_uid=planned.study_uid, series_uid=planned.series_uid
    )
    return index.search(query)


def _shaped(service: DicomwebService, planned: PlannedQuery) -> list[dict[str, Any]]:
    query = parse_query(
        planned.level, planned.params, study_uid=planned.study_uid, series_uid=planned.series_uid
    )
    return service.search(query, BASE)


def _summary(seconds: list[float]) -> dict[str, Any]:
    values = sorted(seconds)
    if not values:
        return {"n": 0, "p50": None, "p95": None, "mean": None}
    finite = [v for v in values if math.isfinite(v)]

    def ms(v: float) -> float | None:
        return round(v * 1000, 2) if math.isfinite(v) else None

    return {
        "n": len(values),
        "p50": ms(percentile(values, 50)),
        "p95": ms(percentile(values, 95)),
        "max": ms(values[-1]),
        "mean": round(sum(finite) / len(finite) * 1000, 2) if finite else None,
    }


class StatementLog:
    """The SQL statements a search runs, captured to EXPLAIN them afterwards."""

    def __init__(self, engine: Engine) -> None:
        self.active = False
        self.statements: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if self.active:
            self.statements.append((statement, parameters))

    @contextmanager
    def capture(self) -> Iterator[list[tuple[str, Any]]]:
        self.statements = []
        self.active = True
        try:
            yield self.statements
        finally:
            self.active = False


def explain(engine: Engine, statements: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """EXPLAIN QUERY PLAN (SQLite) or EXPLAIN (ANALYZE, BUFFERS) (PostgreSQL) of each statement."""
    plans = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in statements:
            if engine.dialect.name == "postgresql":
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
                lines = [row[0] for row in cursor.fetchall()]
            else:
                cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
                lines = [f"{row[0]}:{row[1]} {row[3]}" for row in cursor.fetchall()]
            plans.append({"sql": " ".join(statement.split())[:1500], "plan": lines})
        raw.rollback()
    finally:
        raw.close()
    return plans


def run_kind(
    index: MetadataIndex,
    service: DicomwebService,
    queries: list[PlannedQuery],
    warmup: int,
) -> dict[str, Any]:
    adapter: list[float] = []
    shaped: list[float] = []
    failures: list[str] = []
    results = 0
    slowest: tuple[float, PlannedQuery | None] = (-1.0, None)
    for number, planned in enumerate(queries):
        timed = number >= warmup
        try:
            started = time.perf_counter()
            hits = index_search(index, planned)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            docs = _shaped(service, planned)
            shaped_seconds = time.perf_counter() - started
            if len(hits) != planned.expected or len(docs) != planned.expected:
                raise AssertionError(f"{len(hits)}/{len(docs)} results, expected {planned.expected}")
        except Exception as exc:  # a failure is reported and sorts as infinitely slow
            if timed:
                failures.append(f"{type(exc).__name__}: {exc}"[:300])
                adapter.append(math.inf)
                shaped.append(math.inf)
            continue
        if timed:
            adapter.append(seconds)
            shaped.append(shaped_seconds)
            results += len(hits)
            if seconds > slowest[0]:
                slowest = (seconds, planned)
    return {
        "adapter_ms": _summary(adapter),
        "service_ms": _summary(shaped),
        "mean_results": round(results / max(1, len(adapter) - len(failures)), 1),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "slowest": slowest[1],
    }


def fresh_url(backend: str, folder: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{folder / 'index.db'}"
    if backend == "postgresql":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests import services

        try:
            return services.fresh_postgres_database()
        except BaseException as exc:  # pytest.skip outside pytest: no server
            raise RuntimeError(f"PostgreSQL is not available: {exc}") from None
    raise ValueError(f"unknown backend {backend}")


def drop_database(url: str) -> None:
    from sqlalchemy import create_engine

    server, name = url.rsplit("/", 1)
    engine = create_engine(server + "/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def database_size(engine: Engine, url: str) -> float | None:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            return round(
                int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()) / 1e6, 1
            )
    path = Path(url.removeprefix("sqlite:///"))
    return round(sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6, 1)


def run_sql_backend(backend: str, archive: Archive, truth: Truth, args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"scale-{backend}-"))
    url = fresh_url(backend, folder)
    result: dict[str, Any] = {}
    try:
        log.info("%s: loading %d instances", backend, archive.instances)

        def progress(done: int, seconds: float) -> None:
            log.info("%s: %d instances in %.0f s (%.0f/s)", backend, done, seconds, done / seconds)

        engine, stats = load_sql(archive, url, progress)
        engine.dispose()
        result["load"] = stats.as_json()
        log.info("%s: loaded in %.0f s, analyzed in %.1f s", backend, stats.seconds, stats.analyze_seconds)
        engine = make_engine(url)
        result["load"]["database_mb"] = database_size(engine, url)
        index = SqlMetadataIndex(url, engine=engine)
        service = DicomwebService(cast(BlobStore, NoBlobs()), index, cast(InstanceStore, None), "default")
        statements = StatementLog(engine)
        result["queries"] = {}
        for kind in args.kinds:
            queries = build_queries(archive, kind, args.runs + args.warmup, args.seed, truth)
            measured = run_kind(index, service, queries, args.warmup)
            slowest = measured.pop("slowest")
            if slowest is not None:
                with statements.capture() as captured:
                    index_search(index, slowest)
                measured["explain"] = explain(engine, captured)
                measured["explained_params"] = "&".join(f"{k}={v}" for k, v in slowest.params)[:300]
            _judge(kind, measured)
            result["queries"][kind] = measured
            _log_kind(backend, kind, measured)
        engine.dispose()
    finally:
        if backend == "postgresql" and not args.keep:
            drop_database(url)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            result["kept"] = url
    return result


def run_table_backend(archive: Archive, truth: Truth, args: argparse.Namespace) -> dict[str, Any]:
    """The Azure Table index on Azurite (in memory: 100k instances at most)."""
    if archive.instances > TABLE_MAX:
        return {"skipped": f"Azurite keeps every row in memory: the Table backend runs up to {TABLE_MAX}"}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from azure.data.tables import TableServiceClient

    from bench.scale_table import load_table
    from shared.adapters.index_table import TableMetadataIndex
    from tests import services

    try:
        conn = services.azurite()
    except BaseException as exc:  # pytest.skip outside pytest: no Azurite
        raise RuntimeError(f"Azurite is not available: {exc}") from None
    prefix = f"scale{int(time.time())}"
    table_index = TableMetadataIndex.from_connection_string(conn, prefix=prefix)
    index = cast(MetadataIndex, table_index)  # the adapter's Protocol conformance is its own concern
    result: dict[str, Any] = {}
    try:

        def progress(done: int, seconds: float) -> None:
            log.info("table: %d instances in %.0f s (%.0f/s)", done, seconds, done / seconds)

        stats = load_table(archive, table_index, progress=progress)
        result["load"] = stats.as_json()
        service = DicomwebService(cast(BlobStore, NoBlobs()), index, cast(InstanceStore, None), "default")
        result["queries"] = {}
        for kind in args.kinds:
            queries = build_queries(archive, kind, args.runs + args.warmup, args.seed, truth)
            measured = run_kind(index, service, queries, args.warmup)
            slowest = measured.pop("slowest")
            if slowest is not None:
                measured["explained_params"] = "&".join(f"{k}={v}" for k, v in slowest.params)[:300]
            _judge(kind, measured)
            result["queries"][kind] = measured
            _log_kind("table", kind, measured)
    finally:
        table_index.close()
        if not args.keep:
            with TableServiceClient.from_connection_string(conn) as client:
                for name in ("Studies", "Uids", "Keys", "Changes"):
                    client.delete_table(prefix + name)
    return result


def _judge(kind: str, measured: dict[str, Any]) -> None:
    target = KINDS[kind].target_ms
    p95 = measured["adapter_ms"]["p95"]
    measured["target_ms"] = target
    measured["met"] = p95 is not None and p95 < target and not measured["failures"]


def _log_kind(backend: str, kind: str, measured: dict[str, Any]) -> None:
    log.info(
        "%s %-20s p50 %7s p95 %7s ms (service p95 %s) results %s failures %d",
        backend, kind, measured["adapter_ms"]["p50"], measured["adapter_ms"]["p95"],
        measured["service_ms"]["p95"], measured["mean_results"], measured["failures"],
    )  # fmt: skip


def table(document: dict[str, Any]) -> str:
    lines = []
    for size, per_size in document["sizes"].items():
        backends = list(per_size["backends"])
        header = f"{'query':22} {'target':>7} " + " ".join(f"{b + ' p50/p95':>24}" for b in backends)
        lines += [f"\n{size} instances ({per_size['archive']['studies']} studies)", header]
        for kind in document["kinds"]:
            cells = []
            for backend in backends:
                q = per_size["backends"][backend].get("queries", {}).get(kind)
                if q is None:
                    cells.append(f"{'-':>24}")
                    continue
                mark = "" if q["met"] else (" FAIL" if q["failures"] else " SLOW")
                cells.append(f"{q['adapter_ms']['p50']!s:>8}/{q['adapter_ms']['p95']!s:<8}{mark:>8}")
            lines.append(f"{kind:22} {KINDS[kind].target_ms:>7.0f} " + " ".join(cells))
        loads = [
            f"{b}: {r['load']['instances_per_s']}/s, {r['load']['database_mb']} MB"
            for b, r in per_size["backends"].items()
            if "load" in r and "database_mb" in r["load"]
        ]
        lines.append("load " + "; ".join(loads))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--instances", default="100000", help="comma-separated archive sizes")
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite, postgresql, table")
    parser.add_argument("--quick", action="store_true", help="10 runs per query kind (default 50)")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", default=",".join(KINDS), help="query kinds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the loaded databases")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.sizes = [int(s.replace("_", "")) for s in args.instances.split(",") if s.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    if any(k not in KINDS for k in args.kinds):
        parser.error(f"query kinds must be among {list(KINDS)}")
    if any(b not in ("sqlite", "postgresql", "table") for b in args.backends):
        parser.error("backends must be among sqlite, postgresql, table")
    args.runs = args.runs or (10 if args.quick else 50)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every request at INFO
    started = dt.datetime.now(dt.UTC)
    document: dict[str, Any] = {
        "benchmark": "scale",
        "started": started.isoformat(timespec="seconds"),
        "host": host_info(),
        "args": {"runs": args.runs, "warmup": args.warmup, "seed": args.seed, "backends": args.backends},
        "kinds": {k: {"what": KINDS[k].what, "target_ms": KINDS[k].target_ms} for k in args.kinds},
        "sizes": {},
    }
    ok = True
    for size in args.sizes:
        archive = Archive(args.seed, size)
        truth = Truth(archive)
        gc.collect()
        gc.freeze()  # the archive's objects never reach a collection pause inside a timed query
        n_series = sum(len(s.series) for s in archive.studies)
        per_size: dict[str, Any] = {
            "archive": {
                "instances": archive.instances,
                "studies": len(archive.studies),
                "series": n_series,
                "patients": archive.patients,
                "instances_per_series": round(archive.instances / n_series, 2),
            },
            "backends": {},
            "load_average_before": os.getloadavg(),
        }
        document["sizes"][str(size)] = per_size
        for backend in args.backends:
            try:
                if backend == "table":
                    per_size["backends"][backend] = run_table_backend(archive, truth, args)
                else:
                    per_size["backends"][backend] = run_sql_backend(backend, archive, truth, args)
            except Exception as exc:
                log.exception("%s failed", backend)
                per_size["backends"][backend] = {"error": f"{type(exc).__name__}: {exc}"}
                ok = False
            per_size["backends"][backend]["load_average_after"] = os.getloadavg()
            ok = ok and all(
                q["failures"] == 0 for q in per_size["backends"][backend].get("queries", {}).values()
            )
    document["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    text_out = json.dumps(document, indent=2, default=str)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"scale-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(text_out)
    sys.stdout.write(text_out + "\n")
    sys.stderr.write(table(document))
    sys.stderr.write(f"written to {path}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

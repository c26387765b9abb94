"""Command line: `python -m bench [--baseline orthanc] [--quick] [--only stow,qido,...] [--rounds N]`.

Runs every selected scenario against each server in turn (each started fresh on an empty store),
writes one JSON document to stdout and to bench/results/<timestamp>.json, and a table to stderr.
With `--rounds N` the servers run N times on the same data, their order reversed every other round,
and the table shows each server's median and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import secrets
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import psutil
import pydicom
import urllib3

from bench.corpus import Corpus, Plan
from bench.load import DicomwebClient
from bench.memory import tree_cpu_seconds
from bench.orthanc import OrthancServer, find_orthanc, find_plugin_dir
from bench.report import RATIO_NOTE, ROUNDS_NOTE, median_rows, metric_rows, table
from bench.scenarios import SCENARIOS, Metric, Session
from bench.servers import OursServer, ServerError, ServerProcess

log = logging.getLogger("bench")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_TYPES: dict[str, type[ServerProcess]] = {"ours": OursServer, "orthanc": OrthancServer}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--baseline", choices=["orthanc"], help="also run the same load against this server")
    parser.add_argument(
        "--servers",
        default=None,
        help="comma-separated servers to run (ours, orthanc); default: ours (+ the baseline)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in about a minute")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"subset of: {','.join(SCENARIOS)}")
    parser.add_argument(
        "--big-study-mb", type=float, default=None, help="big study size (default 1024; quick 32)"
    )
    parser.add_argument("--seed", type=int, default=None, help="data seed (default: random, so new UIDs)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the servers N times, alternating their order (default 1); the table shows medians",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep", action="store_true", help="keep the servers' stores and the generated data")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    requested = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in requested if s not in SCENARIOS]
    # Always in the canonical order: STOW first, so later phases never store its instances before
    # it does (the duplicates would count as STOW failures on a server that refuses them).
    args.only = [s for s in SCENARIOS if s in requested]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    servers = (
        args.servers.split(",") if args.servers else ["ours", *([args.baseline] if args.baseline else [])]
    )
    args.servers = [s.strip() for s in servers if s.strip()]
    if any(s not in SERVER_TYPES for s in args.servers):
        parser.error(f"servers must be among {list(SERVER_TYPES)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def round_order(servers: list[str], index: int) -> list[str]:
    """The servers' order in round `index` (0-based): as given, then reversed, alternately.

    The machine drifts over minutes; alternating who goes first spreads that drift over both sides
    instead of always handing the later, slower minutes to the same server.
    """
    return list(servers) if index % 2 == 0 else list(reversed(servers))


def host_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "urllib3": urllib3.__version__,
        "network": "loopback (client and server share the same CPUs)",
    }


def bench_server(name: str, corpus: Corpus, scenarios: list[str], stores: list[Path]) -> dict[str, Any]:
    """Start one server fresh, run the scenarios, stop it; never raises for a server's failure.

    Its store is left in place and added to `stores`, for `main` to delete once every server has
    run: deleting thousands of files just before the next server starts slows that server's own
    file creation on ext4 (its inode allocator skips recently deleted inodes for a while), more so
    the more files it writes. Writes still in the page cache (the generated data, the previous
    server's store) are flushed before the server starts, so that their writeback is not measured.
    """
    server = SERVER_TYPES[name](keep=True)
    stores.append(server.workdir)
    result: dict[str, Any] = {"metrics": {}, "errors": []}
    try:
        os.sync()
        log.info("starting %s", name)
        server.start()
    except ServerError as exc:
        log.error("%s did not start: %s", name, exc)
        result["errors"].append(str(exc))
        server.stop()
        return result
    session = Session(server, corpus, DicomwebClient(server.root))
    result.update(version=server.version, root=server.root)
    try:
        for scenario in scenarios:
            started = time.perf_counter()
            server_cpu, client_cpu = tree_cpu_seconds(server.pid), time.process_time()
            try:
                SCENARIOS[scenario](session)
            except Exception as exc:  # a broken scenario is reported, the others still run
                log.error("%s %s failed: %r", name, scenario, exc)
                log.debug("%s", traceback.format_exc())
                session.errors.append(f"{scenario}: {exc!r}")
            session.details.setdefault("phases", {})[scenario] = {
                "seconds": round(time.perf_counter() - started, 2),
                "server_cpu_s": round(tree_cpu_seconds(server.pid) - server_cpu, 1),
                "client_cpu_s": round(time.process_time() - client_cpu, 1),
            }
            if not server.alive():
                session.errors.append(f"server exited during {scenario}: {server.log_tail()}")
                break
        result["store_on_disk_mb"] = round(server.store_bytes() / 1e6, 1)
    finally:
        session.client.close()
        server.stop()
    result.update(metrics=session.metrics, details=session.details, errors=session.errors)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if "orthanc" in args.servers:
        try:
            find_orthanc()
            find_plugin_dir()
        except ServerError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    plan_type = Plan.quick if args.quick else Plan.full
    plan = plan_type() if args.big_study_mb is None else plan_type(args.big_study_mb)
    started = dt.datetime.now(dt.UTC)
    corpus = Corpus(seed, plan, keep=args.keep)
    rounds: list[dict[str, Any]] = []
    stores: list[Path] = []
    try:
        log.info("generating data (seed %s) in %s", seed, corpus.root)
        corpus.prepare(args.only)
        for index in range(args.rounds):
            order = round_order(args.servers, index)
            if args.rounds > 1:
                log.info("round %d/%d: %s", index + 1, args.rounds, ", then ".join(order))
            round_started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            results = {name: bench_server(name, corpus, args.only, stores) for name in order}
            rounds.append(
                {
                    "round": index + 1,
                    "started": round_started,
                    "order": order,
                    "servers": {name: results[name] for name in args.servers},
                }
            )
    finally:
        corpus.close()
        if not args.keep:
            for store in stores:
                shutil.rmtree(store, ignore_errors=True)

    per_round: list[dict[str, dict[str, Metric]]] = [
        {n: r.pop("metrics") for n, r in rnd["servers"].items()} for rnd in rounds
    ]
    baseline = args.baseline if args.baseline in args.servers and "ours" in args.servers else None
    doc: dict[str, Any] = {
        "benchmark": "dicomweb-bench/1",
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "seed": seed,
        "scenarios": args.only,
        "plan": dataclasses.asdict(plan),
        "host": host_info(),
        "baseline": baseline,
        "ratio_note": RATIO_NOTE if baseline else None,
    }
    errors = [
        (name if len(rounds) == 1 else f"{name} round {rnd['round']}", err)
        for rnd in rounds
        for name, res in rnd["servers"].items()
        for err in res.get("errors", [])
    ]
    if len(rounds) == 1:
        rows = metric_rows(per_round[0], baseline=baseline)
        doc.update(servers=rounds[0]["servers"], metrics=rows)
    else:
        rows = median_rows(per_round, baseline=baseline)
        for rnd, metrics in zip(rounds, per_round, strict=True):
            rnd["metrics"] = metric_rows(metrics, baseline=baseline)
        doc.update(
            rounds_note=ROUNDS_NOTE,
            servers={n: _summary(n, rounds) for n in args.servers},
            metrics=rows,
            rounds=rounds,
        )
    text = json.dumps(doc, indent=2, default=str)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(text + "\n")
    print(text)
    print("\n" + table(rows, list(args.servers), baseline is not None, len(rounds)), file=sys.stderr)
    for who, err in errors:
        print(f"{who}: ERROR {err}", file=sys.stderr)
    print(f"\nresults: {out}", file=sys.stderr)
    failed = bool(errors) or any("failures" in r for r in rows)
    return 1 if failed else 0


def _summary(name: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One server over several rounds: its version and every round's errors (details stay per round)."""
    results = [rnd["servers"][name] for rnd in rounds]
    versions = [r["version"] for r in results if "version" in r]
    return {
        "version": versions[0] if versions else None,
        "errors": [f"round {rnd['round']}: {e}" for rnd in rounds for e in rnd["servers"][name]["errors"]],
    }

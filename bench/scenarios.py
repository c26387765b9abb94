"""The measurements. Each takes a `Session` (one running server) and records metrics into it.

Order inside a run: stow (CT sets) -> qido (loads its studies, then queries) -> retrieve -> frames ->
metadata -> memory (the big study, last so its gigabyte does not sit under the other figures).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import synth
from bench.corpus import STOW_CONFIGS, Corpus, CtSet, StoredFile, stow_tag
from bench.load import (
    ACCEPT_FRAMES,
    ACCEPT_STUDY,
    DicomwebClient,
    Outcome,
    latency_summary,
    run_concurrently,
    stow_body,
    throughput_summary,
)
from bench.memory import RssSampler, tree_cpu_seconds
from bench.servers import ServerProcess

log = logging.getLogger(__name__)

CT_FRAME_BYTES = 512 * 512 * 2
OHIF_STUDY_LIST = (
    ("limit", "101"),
    ("offset", "0"),
    ("fuzzymatching", "false"),
    ("includefield", "00081030,00080060,00080090,00100030"),
)
OHIF_SERIES_FIELDS = (("includefield", "00080021,00080031,0008103E,00200011"),)
QIDO_LIMIT = 101
QIDO_KINDS = (
    "study_list",
    "patient_id",
    "patient_name_wildcard",
    "study_date_range",
    "accession",
    "series_of_study",
)
Query = tuple[str, list[tuple[str, str]], int]  # path, parameters, expected number of results


@dataclass(frozen=True, slots=True)
class Metric:
    value: float | None
    unit: str
    better: str  # "higher" or "lower"
    requests: int = 0
    failures: int = 0


@dataclass
class Session:
    """One server under test, its client, what it has stored, and what was measured."""

    server: ServerProcess
    corpus: Corpus
    client: DicomwebClient
    metrics: dict[str, Metric] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stored_ct: list[CtSet] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)

    def record(self, name: str, value: float | None, unit: str, better: str, summary: dict[str, Any]) -> None:
        self.metrics[name] = Metric(
            value, unit, better, summary.get("requests", 0), summary.get("failures", 0)
        )

    def record_latency(self, name: str, outcomes: Sequence[Outcome]) -> dict[str, Any]:
        summary = latency_summary(outcomes)
        self.details[name] = summary
        self.record(f"{name}.p50", summary["p50_ms"], "ms", "lower", summary)
        self.record(f"{name}.p95", summary["p95_ms"], "ms", "lower", summary)
        return summary


def _store_tasks(
    client: DicomwebClient, files: Sequence[StoredFile], batch: int
) -> list[Callable[[], Outcome]]:
    """Pre-built STOW requests (bodies in memory before the clock starts)."""
    tasks: list[Callable[[], Outcome]] = []
    for i in range(0, len(files), batch):
        chunk = files[i : i + batch]
        body, ctype = stow_body([f.read() for f in chunk])
        tasks.append(functools.partial(client.store, body, ctype, len(chunk)))
    return tasks


def _store_ct(session: Session, ct: CtSet, batch: int, clients: int) -> dict[str, Any]:
    elapsed, outcomes = run_concurrently(_store_tasks(session.client, ct.files, batch), clients)
    if all(o.ok for o in outcomes):
        session.studies.update(s.uid for s in ct.studies)
    return throughput_summary(elapsed, outcomes)


def run_stow(session: Session) -> None:
    """STOW-RS of 512x512 16-bit CT: batches of 1 and 10 instances, 1 and 4 concurrent clients."""
    for batch, clients in STOW_CONFIGS:
        tag = stow_tag(batch, clients)
        warm = session.corpus.stow_warmup_set(batch, clients)
        ct = session.corpus.stow_set(batch, clients)
        _store_ct(session, warm, batch, clients)  # warm-up, excluded
        cpu_before = tree_cpu_seconds(session.server.pid)
        summary = _store_ct(session, ct, batch, clients)
        cpu = tree_cpu_seconds(session.server.pid) - cpu_before
        # The server's CPU per instance: what throughput comes down to once the cores are busy,
        # and far steadier from one run to the next than the throughput of a phase of a second.
        units = summary["units"]
        summary["server_cpu_ms_per_instance"] = round(cpu * 1000 / units, 3) if units and cpu > 0 else None
        session.stored_ct.append(ct)
        session.details[f"stow.{tag}"] = summary
        name = f"stow.ct.batch{batch}.clients{clients}"
        session.record(f"{name}.instances_per_s", summary["units_per_s"], "instances/s", "higher", summary)
        session.record(f"{name}.mb_per_s", summary["mb_per_s"], "MB/s", "higher", summary)
        session.record(
            f"{name}.server_cpu_ms_per_instance",
            summary["server_cpu_ms_per_instance"],
            "ms",
            "lower",
            summary,
        )
        log.info(
            "%s stow %s: %s inst/s, %s MB/s",
            session.server.name,
            tag,
            summary["units_per_s"],
            summary["mb_per_s"],
        )


def ensure_ct(session: Session) -> list[CtSet]:
    """The CT studies retrieve/frames/metadata read; stored untimed if the stow phase did not run."""
    if not session.stored_ct:
        for batch, clients in STOW_CONFIGS:
            ct = session.corpus.stow_set(batch, clients)
            summary = _store_ct(session, ct, 10, 2)
            if summary["failures"]:
                session.errors.append(f"setup store of CT set {batch}/{clients}: {summary['first_error']}")
            session.stored_ct.append(ct)
    return session.stored_ct


def _qido_queries(session: Session, count: int, purpose: str) -> dict[str, list[Query]]:
    """Per kind, `count` (path, params, expected result count) triples; the same for every server."""
    studies, _ = session.corpus.qido()
    rng = session.corpus.rng(purpose)
    total = len(session.studies)
    by_patient: dict[str, int] = {}
    for s in studies:
        by_patient[s.patient.id] = by_patient.get(s.patient.id, 0) + 1
    does = sum(1 for s in studies if s.patient.name.startswith("DOE^"))
    base = list(OHIF_STUDY_LIST)
    kinds: dict[str, list[Query]] = {k: [] for k in QIDO_KINDS}
    for _ in range(count):
        study = rng.choice(studies)
        kinds["study_list"].append(("studies", base, min(QIDO_LIMIT, total)))
        pid = study.patient.id
        kinds["patient_id"].append(("studies", [*base, ("PatientID", pid)], min(QIDO_LIMIT, by_patient[pid])))
        kinds["patient_name_wildcard"].append(
            ("studies", [*base, ("PatientName", "DOE*")], min(QIDO_LIMIT, does))
        )
        first = synth.QIDO_FIRST_DATE + dt.timedelta(days=rng.randrange(synth.QIDO_DAYS - 30))
        lo, hi = first.strftime("%Y%m%d"), (first + dt.timedelta(days=30)).strftime("%Y%m%d")
        in_range = sum(1 for s in studies if lo <= s.date <= hi)
        kinds["study_date_range"].append(
            ("studies", [*base, ("StudyDate", f"{lo}-{hi}")], min(QIDO_LIMIT, in_range))
        )
        kinds["accession"].append(("studies", [*base, ("AccessionNumber", study.accession)], 1))
        kinds["series_of_study"].append(
            (f"studies/{study.uid}/series", list(OHIF_SERIES_FIELDS), len(study.series_uids))
        )
    return kinds


def run_qido(session: Session) -> None:
    """Load the QIDO studies by STOW (timed: a STOW figure), then time each query kind."""
    plan = session.corpus.plan
    studies, instances = session.corpus.qido()
    tasks = []
    for i in range(0, len(instances), plan.qido_load_batch):
        chunk = instances[i : i + plan.qido_load_batch]
        body, ctype = stow_body([data for _, data in chunk])
        tasks.append(functools.partial(session.client.store, body, ctype, len(chunk)))
    elapsed, outcomes = run_concurrently(tasks, plan.qido_load_clients)
    summary = throughput_summary(elapsed, outcomes)
    session.details["qido.load"] = {**summary, "studies": len(studies), "batch": plan.qido_load_batch}
    session.record(
        "stow.small.batch50.instances_per_s", summary["units_per_s"], "instances/s", "higher", summary
    )
    if all(o.ok for o in outcomes):
        session.studies.update(s.uid for s in studies)
    log.info(
        "%s qido load: %s inst/s (%s failures)",
        session.server.name,
        summary["units_per_s"],
        summary["failures"],
    )
    warm = _qido_queries(session, plan.warmup, "qido-warmup")
    timed = _qido_queries(session, plan.qido_queries, "qido")
    for kind, queries in timed.items():
        for path, params, expected in warm[kind]:
            session.client.search(path, params, expected)
        outcomes = [session.client.search(path, params, expected) for path, params, expected in queries]
        summary = session.record_latency(f"qido.{kind}", outcomes)
        summary["mean_results"] = round(sum(o.units for o in outcomes) / max(1, len(outcomes)), 1)
        log.info(
            "%s qido %s: p50 %s ms, p95 %s ms",
            session.server.name,
            kind,
            summary["p50_ms"],
            summary["p95_ms"],
        )


def run_retrieve(session: Session) -> None:
    """Whole-study WADO-RS (`GET /studies/{s}`, any transfer syntax), streamed and counted."""
    cts = ensure_ct(session)
    studies = [(s, ct.series_size(s.series_uids[0])) for ct in cts for s in ct.studies]
    first, size = studies[0]
    session.client.retrieve_multipart(f"studies/{first.uid}", ACCEPT_STUDY, size)  # warm-up
    tasks = [
        functools.partial(
            session.client.retrieve_multipart, f"studies/{s.uid}", ACCEPT_STUDY, n, n * CT_FRAME_BYTES
        )
        for _ in range(session.corpus.plan.retrieve_rounds)
        for s, n in studies
    ]
    elapsed, outcomes = run_concurrently(tasks, 1)
    summary = throughput_summary(elapsed, outcomes)
    summary["latency"] = latency_summary(outcomes)
    session.details["retrieve.study"] = summary
    session.record("retrieve.study.mb_per_s", summary["mb_per_s"], "MB/s", "higher", summary)
    log.info("%s retrieve: %s MB/s", session.server.name, summary["mb_per_s"])


def _ct_sample(session: Session, count: int, purpose: str) -> list[StoredFile]:
    files = [f for ct in ensure_ct(session) for f in ct.files]
    rng = session.corpus.rng(purpose)
    return [rng.choice(files) for _ in range(count)]


def run_frames(session: Session) -> None:
    """Single-frame WADO-RS (`.../frames/1`, octet-stream, any transfer syntax), one client."""
    plan = session.corpus.plan
    for purpose, n in (("frames-warmup", plan.warmup), ("frames", plan.frame_requests)):
        outcomes = [
            session.client.retrieve_multipart(
                f"studies/{f.ref.study}/series/{f.ref.series}/instances/{f.ref.sop}/frames/1",
                ACCEPT_FRAMES,
                1,
                CT_FRAME_BYTES,
            )
            for f in _ct_sample(session, n, purpose)
        ]
    summary = session.record_latency("wado.frame", outcomes)
    log.info("%s frame: p50 %s ms, p95 %s ms", session.server.name, summary["p50_ms"], summary["p95_ms"])


def run_metadata(session: Session) -> None:
    """Series metadata (DICOM JSON of every instance of a CT series), one client."""
    plan = session.corpus.plan
    cts = ensure_ct(session)
    series = [(ct, s.uid, s.series_uids[0]) for ct in cts for s in ct.studies]
    for purpose, n in (("metadata-warmup", plan.warmup), ("metadata", plan.metadata_requests)):
        rng = session.corpus.rng(purpose)
        picks = [rng.choice(series) for _ in range(n)]
        outcomes = [
            session.client.metadata(f"studies/{study}/series/{ser}/metadata", ct.series_size(ser))
            for ct, study, ser in picks
        ]
    summary = session.record_latency("wado.series_metadata", outcomes)
    log.info("%s metadata: p50 %s ms, p95 %s ms", session.server.name, summary["p50_ms"], summary["p95_ms"])


def run_memory(session: Session) -> None:
    """Peak memory (PSS, and RSS in the details) of the server tree while storing (batches by STOW)
    and then retrieving one big study."""
    plan = session.corpus.plan
    big = session.corpus.big_study()
    study = big.studies[0]
    pid = session.server.pid
    time.sleep(1.0)
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    with RssSampler(pid) as store_rss:
        for i in range(0, len(big.files), plan.big_batch):  # bodies built as it goes: 1 GB is not held
            chunk = big.files[i : i + plan.big_batch]
            body, ctype = stow_body([f.read() for f in chunk])
            outcomes.append(session.client.store(body, ctype, len(chunk)))
    store = throughput_summary(time.perf_counter() - start, outcomes)
    time.sleep(1.0)
    with RssSampler(pid) as retrieve_rss:
        got = session.client.retrieve_multipart(
            f"studies/{study.uid}", ACCEPT_STUDY, len(big.files), len(big.files) * CT_FRAME_BYTES
        )
    retrieve = throughput_summary(got.seconds, [got])
    mb = 1e6
    details = {
        "instances": len(big.files),
        "study_mb": round(sum(f.path.stat().st_size for f in big.files) / mb, 1),
        "batch": plan.big_batch,
        "pss_before_store_mb": round(store_rss.start_pss / mb, 1),
        "peak_pss_store_mb": round(store_rss.peak_pss / mb, 1),
        "pss_before_retrieve_mb": round(retrieve_rss.start_pss / mb, 1),
        "peak_pss_retrieve_mb": round(retrieve_rss.peak_pss / mb, 1),
        "rss_before_store_mb": round(store_rss.start_rss / mb, 1),
        "peak_rss_store_mb": round(store_rss.peak / mb, 1),
        "rss_before_retrieve_mb": round(retrieve_rss.start_rss / mb, 1),
        "peak_rss_retrieve_mb": round(retrieve_rss.peak / mb, 1),
        "growth_store_mb": round((store_rss.peak - store_rss.start_rss) / mb, 1),
        "growth_retrieve_mb": round((retrieve_rss.peak - retrieve_rss.start_rss) / mb, 1),
        "samples": store_rss.samples + retrieve_rss.samples,
        "store": store,
        "retrieve": retrieve,
    }
    session.details["memory.big_study"] = details
    ok_store = store["failures"] == 0
    session.record("memory.big_study.store_mb_per_s", store["mb_per_s"], "MB/s", "higher", store)
    session.record("memory.big_study.retrieve_mb_per_s", retrieve["mb_per_s"], "MB/s", "higher", retrieve)
    session.record(
        "memory.peak_pss_store_mb", details["peak_pss_store_mb"] if ok_store else None, "MB", "lower", store
    )
    session.record(
        "memory.peak_pss_retrieve_mb",
        details["peak_pss_retrieve_mb"] if got.ok else None,
        "MB",
        "lower",
        retrieve,
    )
    log.info(
        "%s big study: store peak %s MB (RSS %s), retrieve peak %s MB (RSS %s), retrieve %s MB/s",
        session.server.name,
        details["peak_pss_store_mb"],
        details["peak_rss_store_mb"],
        details["peak_pss_retrieve_mb"],
        details["peak_rss_retrieve_mb"],
        retrieve["mb_per_s"],
    )


SCENARIOS: dict[str, Callable[[Session], None]] = {
    "stow": run_stow,
    "qido": run_qido,
    "retrieve": run_retrieve,
    "frames": run_frames,
    "metadata": run_metadata,
    "memory": run_memory,
}

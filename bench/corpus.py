"""The benchmark's data set: generated once per run into a temporary folder, the same for every server."""

from __future__ import annotations

import math
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench import synth
from bench.synth import InstanceRef, StudyInfo


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one run (`full` or `quick`)."""

    stow_instances: int  # per STOW configuration
    stow_warmup: int  # instances per configuration, sent first and excluded
    ct_study_size: int  # CT instances per study (one series) in the STOW sets
    qido_studies: int
    qido_load_batch: int
    qido_load_clients: int
    qido_queries: int  # timed queries per kind
    warmup: int  # untimed requests before each latency series
    frame_requests: int
    metadata_requests: int
    retrieve_rounds: int  # times every CT study is retrieved whole
    big_study_mb: float
    big_batch: int

    @classmethod
    def full(cls, big_study_mb: float = 1024) -> Plan:
        return cls(600, 10, 50, 3000, 50, 2, 100, 5, 200, 50, 1, big_study_mb, 16)

    @classmethod
    def quick(cls, big_study_mb: float = 32) -> Plan:
        return cls(20, 2, 10, 200, 50, 2, 15, 2, 30, 10, 1, big_study_mb, 16)


STOW_CONFIGS: tuple[tuple[int, int], ...] = ((1, 1), (10, 1), (1, 4), (10, 4))  # (batch, clients)


def stow_tag(batch: int, clients: int) -> str:
    return f"b{batch}c{clients}"


@dataclass(frozen=True, slots=True)
class StoredFile:
    ref: InstanceRef
    path: Path

    def read(self) -> bytes:
        return self.path.read_bytes()


@dataclass
class CtSet:
    """CT instances grouped in studies of one series each."""

    studies: list[StudyInfo] = field(default_factory=list)
    files: list[StoredFile] = field(default_factory=list)

    def series_size(self, series_uid: str) -> int:
        return sum(1 for f in self.files if f.ref.series == series_uid)


class Corpus:
    """Lazily generated, cached data; files live under a temporary folder removed by `close()`."""

    def __init__(self, seed: int, plan: Plan, keep: bool = False) -> None:
        self.seed = seed
        self.plan = plan
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="dwbench-data-"))
        self._phantom = synth.CtPhantom(seed)
        self._ct: dict[str, CtSet] = {}
        self._qido: tuple[list[StudyInfo], list[tuple[InstanceRef, bytes]]] | None = None

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def ct_set(self, tag: str, count: int, study_size: int) -> CtSet:
        """`count` CT instances under tag `tag`, `study_size` per study; generated on first use."""
        if tag in self._ct:
            return self._ct[tag]
        folder = self.root / tag
        folder.mkdir()
        ct = CtSet()
        for s in range(math.ceil(count / study_size)):
            study = synth.ct_study(self.seed, tag, s)
            ct.studies.append(study)
            for k in range(min(study_size, count - s * study_size)):
                sop = synth.make_uid(self.seed, "ct-sop", tag, s, k)
                path = folder / f"{s:04d}-{k:05d}.dcm"
                path.write_bytes(synth.ct_instance(self._phantom, study, study.series_uids[0], sop, k + 1))
                ct.files.append(StoredFile(InstanceRef(study.uid, study.series_uids[0], sop), path))
        self._ct[tag] = ct
        return ct

    def stow_set(self, batch: int, clients: int) -> CtSet:
        p = self.plan
        return self.ct_set(stow_tag(batch, clients), p.stow_instances, p.ct_study_size)

    def stow_warmup_set(self, batch: int, clients: int) -> CtSet:
        p = self.plan
        return self.ct_set("warm" + stow_tag(batch, clients), p.stow_warmup, p.ct_study_size)

    def big_study(self) -> CtSet:
        """One study (one series) of about `big_study_mb` MB (10^6 bytes) of CT instances."""
        per_instance = len(
            synth.ct_instance(self._phantom, synth.ct_study(self.seed, "probe", 0), "1.2", "1.2.3", 1)
        )
        count = max(1, math.ceil(self.plan.big_study_mb * 1e6 / per_instance))
        return self.ct_set("big", count, count)

    def qido(self) -> tuple[list[StudyInfo], list[tuple[InstanceRef, bytes]]]:
        """The QIDO studies and their tiny instances (kept in memory: ~1.5 KB each)."""
        if self._qido is None:
            studies = synth.qido_studies(self.seed, self.plan.qido_studies)
            instances = []
            for study in studies:
                for k, series in enumerate(study.series_uids):
                    sop = synth.make_uid(self.seed, "qido-sop", study.uid, k)
                    data = synth.small_instance(study, series, k + 1, sop)
                    instances.append((InstanceRef(study.uid, series, sop), data))
            self._qido = (studies, instances)
        return self._qido

    def prepare(self, scenarios: list[str]) -> None:
        """Generate everything the scenarios need now, before any server runs or any clock starts."""
        if {"stow", "retrieve", "frames", "metadata"} & set(scenarios):
            for batch, clients in STOW_CONFIGS:
                self.stow_set(batch, clients)
                if "stow" in scenarios:
                    self.stow_warmup_set(batch, clients)
        if "qido" in scenarios:
            self.qido()
        if "memory" in scenarios:
            self.big_study()

    def rng(self, purpose: str) -> random.Random:
        """A generator seeded by the run seed and a purpose, so every server gets the same sequence."""
        return random.Random(f"{self.seed}:{purpose}")

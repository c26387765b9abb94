"""A QIDO corpus of about 200 synthetic instances and the reference answer to any query over it.

The values are chosen to exercise the matching rules: accents, case, multi-word and `^`-separated
names, ideographic and phonetic component groups, LIKE metacharacters (`%`, `_`) in values, dates
over 27 years (one in the old YYYY.MM.DD form, one invalid), times at several precisions, missing
values, a multi-valued ReferringPhysicianName. `load` stores it through the index's two-phase
protocol and also leaves things that must never be found: pending, aborted, superseded and deleted
instances (their values - Modality XA, InstanceNumber 99x, names ending in "^Hidden" - match
nothing that is visible).
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from shared.core.attributes import MATCHABLE, Level
from shared.core.model import InstanceRecord, InstanceUids
from shared.core.ports import MetadataIndex
from shared.core.query import Query, matches
from tests.contract.records import CT_IMAGE, MR_IMAGE, json_values, make_record, new_version, uid

Key = tuple[str, str | None, str | None]

PATIENT_NAMES: list[str | None] = [
    "Müller^Hans",
    "MULLER^HANS^^DR",
    "Muller^Hansi",
    "müller-lüdenscheidt^hans",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "Yamada^Hanako=山田^花子=やまだ^はなこ",
    "=山田^一郎",
    "Hong^Gildong=洪^吉洞=홍^길동",
    "Wang^XiaoDong=王^小東",
    "O'Brien^Mary Ann",
    "van der Berg^Jan",
    "de la Cruz^José María",
    "Smith^John^A^Dr^Jr",
    "Smith^Johnathan",
    "SMITH^JOHN",
    "smith^john",
    "Smithson^Jo",
    "Doe",
    "Zoë^Ångström",
    "Διονυσίου^Ελένη",
    "Иванов^Иван",
    "Under_Score^Per%cent",
    "UnderXScore^Perccent",
    "Øster^Åse",
    "Nguyễn^Văn An",
    None,
    "Johnson^Smith",
    "Παπαδόπουλος^Νίκος==Papadopoulos^Nikos",
    "",
]
PATIENT_IDS = {21: "A_1", 22: "A%1", 23: "AX1", 24: "a_1", 17: "PID 17"}
REFERRING: list[Any] = [
    "Kildare^James",
    "Welby^Marcus",
    "Quinn^Michaela=クイン^ミカエラ",
    ["House^Gregory", "Wilson^James"],
    None,
    "Casey^Ben",
    "kildare^james^^Dr",
]
DESCRIPTIONS = [
    "CT Chest",
    "ct chest",
    "CT Chest with contrast",
    "MR Brain",
    "Chest CT 50% dose",
    "Chest_CT",
    "ChestXCT",
    "Thorax",
    "Abdomen^Pelvis",
    None,
    "Knie rechts (ärztliche Kontrolle)",
]
STUDY_TIMES = [
    "083000",
    "1430",
    "235959.999999",
    "00",
    "12:30:00",
    "120000.5",
    "120000",
    "125959",
    "130000",
    None,
]
DATES = {3: "1999.03.04", 4: "20200229", 5: "20230230", 6: None, 7: None, 8: "20150615", 9: "20150615"}
ACCESSIONS = {7: "acc0007", 17: "ACC 77", 18: None, 19: "A%1"}
MODALITIES = ["CT", "CT", "MR", "MR", "US", "SR", "SEG", "PR", "OT", "DX", None]
SOP_CLASSES = {
    "CT": CT_IMAGE,
    "MR": MR_IMAGE,
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "SR": "1.2.840.10008.5.1.4.1.1.88.22",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",
    "PR": "1.2.840.10008.5.1.4.1.1.11.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SERIES_DESCRIPTIONS = ["Axial 5mm", "axial 1mm", "Sag T1", "Cor T2", "Scout", None, "Dose Report"]
PPS_TIMES = ["0700", "071500", "1200", None, "23:59:59"]
N_STUDIES = 46


@dataclass
class Corpus:
    records: list[InstanceRecord] = field(default_factory=list)  # visible, in store order
    placeholders: dict[str, str] = field(default_factory=dict)  # S3 / R3_0 / I3_0_1 -> UID

    def study_attrs(self) -> dict[str, Any]:
        return {r.uids.study: r.study_attrs for r in self.records}

    def modalities(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for r in self.records:
            out[r.uids.study].update(json_values(r.series_attrs, "Modality"))
        return out

    def instance_counts(self) -> tuple[dict[str, int], dict[str, set[str]], dict[str, int]]:
        """Instances per study, series per study, instances per series."""
        per_study: dict[str, int] = defaultdict(int)
        series_of: dict[str, set[str]] = defaultdict(set)
        per_series: dict[str, int] = defaultdict(int)
        for r in self.records:
            per_study[r.uids.study] += 1
            series_of[r.uids.study].add(r.uids.series)
            per_series[r.uids.series] += 1
        return per_study, series_of, per_series

    def expected(self, query: Query) -> set[Key]:
        """What the reference matcher finds: every condition's `matches` over the entity's values,
        study-level keys against the study, ModalitiesInStudy against its series' modalities."""
        modalities = self.modalities()
        found: set[Key] = set()
        for r in self.records:
            u = r.uids
            if (query.study_uid and u.study != query.study_uid) or (
                query.series_uid and u.series != query.series_uid
            ):
                continue
            levels = {
                Level.STUDY: r.study_attrs,
                Level.SERIES: r.series_attrs,
                Level.INSTANCE: r.instance_attrs,
            }

            def value(
                keyword: str, levels: dict[Level, Any] = levels, study: str = u.study
            ) -> list[str] | None:
                if keyword == "ModalitiesInStudy":
                    return sorted(modalities[study]) or None
                return json_values(levels[MATCHABLE[keyword].level], keyword) or None

            if all(matches(c, value(c.keyword)) for c in query.conditions):
                if query.level is Level.STUDY:
                    found.add((u.study, None, None))
                elif query.level is Level.SERIES:
                    found.add((u.study, u.series, None))
                else:
                    found.add((u.study, u.series, u.instance))
        return found


def build_corpus(seed: int = 20240607) -> Corpus:
    rng = random.Random(seed)
    corpus = Corpus()
    for s in range(N_STUDIES):
        p = s % len(PATIENT_NAMES)
        study = uid(100 + s)
        corpus.placeholders[f"S{s}"] = study
        date = DATES.get(s, f"{rng.randint(1998, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}")
        study_kw: dict[str, Any] = {
            "PatientName": PATIENT_NAMES[p],
            "PatientID": PATIENT_IDS.get(p, f"PID-{p:04d}"),
            "PatientBirthDate": f"{1930 + 3 * p}{(p % 12) + 1:02d}15" if p % 5 else None,
            "PatientSex": ["M", "F", "O", None][p % 4],
            "StudyDate": date,
            "StudyTime": STUDY_TIMES[s % len(STUDY_TIMES)],
            "AccessionNumber": ACCESSIONS.get(s, f"ACC{s:04d}"),
            "ReferringPhysicianName": REFERRING[s % len(REFERRING)],
            "StudyID": f"S{s}",
            "StudyDescription": DESCRIPTIONS[s % len(DESCRIPTIONS)],
        }
        for r in range(rng.choice([1, 1, 2, 2, 3])):
            series = uid(100 + s, r + 1)
            corpus.placeholders[f"R{s}_{r}"] = series
            # every fifth study has all its series in one modality (listed once in ModalitiesInStudy)
            modality = MODALITIES[(s + (0 if s % 5 == 0 else 3) * r) % len(MODALITIES)]
            series_kw: dict[str, Any] = {
                "Modality": modality,
                "SeriesNumber": r + 1 if (s + r) % 7 else None,
                "SeriesDescription": SERIES_DESCRIPTIONS[(s + r) % len(SERIES_DESCRIPTIONS)],
                "PerformedProcedureStepStartDate": date if r != 1 and date and "." not in date else None,
                "PerformedProcedureStepStartTime": PPS_TIMES[(s + r) % len(PPS_TIMES)],
            }
            for i in range(rng.choice([1, 2, 2, 3, 4])):
                instance = uid(100 + s, r + 1, i + 1)
                corpus.placeholders[f"I{s}_{r}_{i}"] = instance
                corpus.records.append(
                    make_record(
                        InstanceUids(study, series, instance),
                        sop_class=SOP_CLASSES.get(modality or "", SECONDARY_CAPTURE),
                        InstanceNumber=i + 1 if (s + i) % 9 else None,
                        **study_kw,
                        **series_kw,
                    )
                )
    return corpus


def _hidden(base: InstanceRecord, *, study: str | None = None, series: str | None = None) -> InstanceRecord:
    """A record that must never be found, in `base`'s study (or a new one) and series (or a new one)."""
    uids = InstanceUids(study or base.uids.study, series or base.uids.series, uid())
    attrs: dict[str, Any] = {"InstanceNumber": 990}
    if series:
        attrs.update(Modality="XA", SeriesNumber=99)
    if study:
        attrs.update(PatientName="Pending^Hidden", PatientID="HIDDEN", StudyDate="20991231")
    rec = make_record(uids, **attrs)
    if study:
        return rec
    # Keep the visible study's (and series') attributes, so the commit of a hidden record in a
    # visible study or series changes nothing that the reference answer depends on.
    return dataclasses.replace(
        rec,
        study_attrs=base.study_attrs,
        series_attrs=rec.series_attrs if series else base.series_attrs,
    )


def load(index: MetadataIndex, corpus: Corpus) -> None:
    """Store the corpus, plus pending, aborted, superseded and deleted entries that stay hidden."""
    records = corpus.records
    superseded = {7, 40, 120}  # first stored with InstanceNumber 991, then replaced
    for n, rec in enumerate(records):
        if n in superseded:
            old = make_record(rec.uids, InstanceNumber=991)
            old = dataclasses.replace(old, study_attrs=rec.study_attrs, series_attrs=rec.series_attrs)
            index.commit_instance(old, index.begin_instance(old, replace=False))
            pending = index.begin_instance(rec, replace=True)
            assert pending.replaces == old.version
        else:
            pending = index.begin_instance(rec, replace=False)
        index.commit_instance(rec, pending)
    # A replacement in flight: the visible version stays the committed one.
    in_flight = dataclasses.replace(records[11], version=new_version(), instance_attrs={})
    index.begin_instance(in_flight, replace=True)
    # Pending: in a committed series, in a new series of a committed study, in a new study.
    index.begin_instance(_hidden(records[20]), replace=False)
    index.begin_instance(_hidden(records[30], series=uid()), replace=False)
    index.begin_instance(_hidden(records[0], study=uid(), series=uid()), replace=False)
    # Aborted: a new study, and a new instance in a committed series.
    for rec in (_hidden(records[0], study=uid(), series=uid()), _hidden(records[50])):
        index.abort_instance(index.begin_instance(rec, replace=False))
    # Deleted: a whole study, a series of a committed study, an instance of a committed series.
    gone_study = _hidden(records[0], study=uid(), series=uid())
    gone_series = _hidden(records[60], series=uid())
    gone_instance = _hidden(records[70])
    for rec in (gone_study, gone_series, gone_instance):
        index.commit_instance(rec, index.begin_instance(rec, replace=False))
    corpus.placeholders["DELETED_STUDY"] = gone_study.uids.study
    assert len(index.delete(gone_study.uids.study)) == 1
    assert len(index.delete(gone_series.uids.study, gone_series.uids.series)) == 1
    assert len(index.delete(*dataclasses.astuple(gone_instance.uids))) == 1

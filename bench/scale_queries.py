"""The QIDO-RS queries of the scale benchmark, with values drawn from the archive and the number of
results each must return (computed from the generator's own records, independently of any index;
bench/tests/test_scale.py checks these counts against the core's reference matcher)."""

from __future__ import annotations

import bisect
import calendar
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from bench.scale_archive import Archive, Study
from shared.core.attributes import Level, name_words, normalize_name

Params = tuple[tuple[str, str], ...]
# What OHIF's study list sends with every search.
OHIF = (
    ("limit", "101"),
    ("offset", "0"),
    ("fuzzymatching", "false"),
    ("includefield", "00081030,00080060,00080090,00100030"),
)
LIMIT = 101
EXACT_MS = 20.0
SEARCH_MS = 100.0


@dataclass(frozen=True, slots=True)
class PlannedQuery:
    kind: str
    level: Level
    params: Params
    expected: int  # results, after paging
    study_uid: str | None = None
    series_uid: str | None = None


@dataclass(frozen=True, slots=True)
class Kind:
    level: Level
    target_ms: float
    what: str


KINDS: dict[str, Kind] = {
    "patient_id": Kind(Level.STUDY, EXACT_MS, "exact PatientID (OHIF study list form)"),
    "accession": Kind(Level.STUDY, EXACT_MS, "exact AccessionNumber"),
    "uid_list": Kind(Level.STUDY, EXACT_MS, "StudyInstanceUID list of 10"),
    "name_prefix": Kind(Level.STUDY, SEARCH_MS, "PatientName=FAMILY* (as written, accents and all)"),
    "fuzzy_word": Kind(Level.STUDY, SEARCH_MS, "fuzzymatching=true&PatientName=<word or word prefix>"),
    "date_day": Kind(Level.STUDY, SEARCH_MS, "StudyDate=<one day>"),
    "date_month": Kind(Level.STUDY, SEARCH_MS, "StudyDate=<one calendar month>"),
    "modality_range": Kind(Level.STUDY, SEARCH_MS, "ModalitiesInStudy=<M>&StudyDate=<3 months>"),
    "study_list": Kind(Level.STUDY, SEARCH_MS, "study list limit=101&offset=0 (OHIF includefield)"),
    "deep_paging": Kind(Level.STUDY, SEARCH_MS, "study list offset=5000&limit=101"),
    "series_of_study": Kind(Level.SERIES, EXACT_MS, "/studies/{s}/series"),
    "instances_of_series": Kind(Level.INSTANCE, EXACT_MS, "/studies/{s}/series/{r}/instances"),
}


def _paged(total: int, offset: int = 0, limit: int = LIMIT) -> int:
    return max(0, min(limit, total - offset))


class Truth:
    """Lookups over the generated studies that give the expected count of each query."""

    def __init__(self, archive: Archive) -> None:
        studies = archive.studies
        self.studies = studies
        self.by_patient = Counter(s.patient.id for s in studies)
        self.names = sorted(normalize_name(s.patient.name) for s in studies)
        self.by_date = sorted(s.date for s in studies)
        self.by_modality: dict[str, list[str]] = defaultdict(list)
        for s in studies:
            for modality in s.modalities:
                self.by_modality[modality].append(s.date)
        for dates in self.by_modality.values():
            dates.sort()
        word_studies: dict[str, set[int]] = defaultdict(set)
        for n, s in enumerate(studies):
            for word in name_words(s.patient.name):
                word_studies[word].add(n)
        self.words = sorted(word_studies)
        self.word_studies = word_studies

    @staticmethod
    def _between(values: list[str], low: str, high: str) -> int:
        return bisect.bisect_right(values, high) - bisect.bisect_left(values, low)

    def name_prefix(self, prefix: str) -> int:
        return self._between(self.names, prefix, prefix + "\U0010ffff")

    def fuzzy(self, prefix: str) -> int:
        start = bisect.bisect_left(self.words, prefix)
        found: set[int] = set()
        for word in self.words[start:]:
            if not word.startswith(prefix):
                break
            found |= self.word_studies[word]
        return len(found)

    def dates(self, low: str, high: str) -> int:
        return self._between(self.by_date, low, high)

    def modality_dates(self, modality: str, low: str, high: str) -> int:
        return self._between(self.by_modality[modality], low, high)


def _month(date: str) -> tuple[str, str]:
    year, month = int(date[:4]), int(date[4:6])
    return f"{year:04d}{month:02d}01", f"{year:04d}{month:02d}{calendar.monthrange(year, month)[1]:02d}"


def _quarter(date: str) -> tuple[str, str]:
    year, month = int(date[:4]), int(date[4:6])
    last_month = month + 2
    last_year = year + (last_month - 1) // 12
    last_month = (last_month - 1) % 12 + 1
    return f"{year:04d}{month:02d}01", _month(f"{last_year:04d}{last_month:02d}01")[1]


def _study_query(kind: str, params: Params, expected: int) -> PlannedQuery:
    return PlannedQuery(kind, Level.STUDY, (*params, *OHIF), expected)


Builder = Callable[[Truth, Study, random.Random], PlannedQuery]


def _patient_id(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    return _study_query("patient_id", (("PatientID", s.patient.id),), truth.by_patient[s.patient.id])


def _accession(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    return _study_query("accession", (("AccessionNumber", s.accession),), 1)


def _uid_list(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    uids = [o.uid for o in rng.sample(truth.studies, min(10, len(truth.studies)))]
    return _study_query("uid_list", (("StudyInstanceUID", ",".join(uids)),), _paged(len(uids)))


def _name_prefix(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    family = s.patient.name.split("^")[0]
    count = truth.name_prefix(normalize_name(family))
    return _study_query("name_prefix", (("PatientName", family + "*"),), _paged(count))


def _fuzzy_word(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    word = rng.choice(s.patient.name.replace("^", " ").split())
    if len(word) > 4 and rng.random() < 0.5:
        word = word[:4]  # a prefix, as a user types it
    count = truth.fuzzy(normalize_name(word))
    params = (("PatientName", word), ("fuzzymatching", "true"), *OHIF[:2], OHIF[3])
    return PlannedQuery("fuzzy_word", Level.STUDY, params, _paged(count))


def _date_day(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    return _study_query("date_day", (("StudyDate", s.date),), _paged(truth.dates(s.date, s.date)))


def _date_month(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    low, high = _month(s.date)
    return _study_query("date_month", (("StudyDate", f"{low}-{high}"),), _paged(truth.dates(low, high)))


def _modality_range(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    modality = rng.choice(s.modalities)
    low, high = _quarter(s.date)
    params = (("ModalitiesInStudy", modality), ("StudyDate", f"{low}-{high}"))
    return _study_query("modality_range", params, _paged(truth.modality_dates(modality, low, high)))


def _study_list(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    return _study_query("study_list", (), _paged(len(truth.studies)))


def _deep_paging(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    params = (("offset", "5000"), ("limit", "101"), ("includefield", OHIF[3][1]))
    return PlannedQuery("deep_paging", Level.STUDY, params, _paged(len(truth.studies), 5000))


def _series_of_study(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    return PlannedQuery("series_of_study", Level.SERIES, (), len(s.series), study_uid=s.uid)


def _instances_of_series(truth: Truth, s: Study, rng: random.Random) -> PlannedQuery:
    one = rng.choice(s.series)
    return PlannedQuery(
        "instances_of_series", Level.INSTANCE, (), one.instances, study_uid=s.uid, series_uid=one.uid
    )


_BUILDERS: dict[str, Builder] = {
    "patient_id": _patient_id,
    "accession": _accession,
    "uid_list": _uid_list,
    "name_prefix": _name_prefix,
    "fuzzy_word": _fuzzy_word,
    "date_day": _date_day,
    "date_month": _date_month,
    "modality_range": _modality_range,
    "study_list": _study_list,
    "deep_paging": _deep_paging,
    "series_of_study": _series_of_study,
    "instances_of_series": _instances_of_series,
}


def build_queries(
    archive: Archive, kind: str, count: int, seed: int, truth: Truth | None = None
) -> list[PlannedQuery]:
    """`count` queries of a kind with values drawn (by `seed`) from random studies of the archive."""
    truth = truth or Truth(archive)
    rng = random.Random(f"{seed}-{kind}")
    return [_BUILDERS[kind](truth, rng.choice(archive.studies), rng) for _ in range(count)]

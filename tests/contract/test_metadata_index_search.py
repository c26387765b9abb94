"""MetadataIndex contract, QIDO-RS search: every adapter answers as the reference matcher does.

Each query string of the table is parsed at every level where all its keys apply, and the set of
studies / series / instances the adapter returns is compared with the set that `matches`
(shared/core/query.py) computes over the corpus. Query strings are taken as already
percent-decoded (`%` is literal); `{S3}`, `{R3_0}`, `{I3_0_1}` stand for the UIDs of study 3,
its first series and that series' second instance.

Where an adapter deliberately differs from the reference, the case is listed in
KNOWN_DIFFERENCES under the adapter's name and runs as a strict xfail.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest

from shared.core.attributes import Level, tag_of
from shared.core.model import SearchHit
from shared.core.ports import MetadataIndex
from tests.contract.conftest import NamedIndex
from tests.contract.corpus import Corpus, Key, build_corpus, load
from tests.contract.records import query

QUERIES: list[str] = [
    # -- PatientName: single value (accent- and case-insensitive, per component group)
    "PatientName=Müller^Hans",
    "PatientName=muller^hans",
    "PatientName=MULLER^HANS^^DR",
    "PatientName=Muller^Hans^^Dr",
    "PatientName=Yamada^Tarou",
    "PatientName=山田^太郎",
    "PatientName=やまだ^たろう",
    "PatientName=Yamada^Tarou=山田^太郎",
    "PatientName=Yamada^Hanako=山田^太郎",
    "PatientName=山田^一郎",
    "PatientName=홍^길동",
    "PatientName=Hong^Gildong",
    "PatientName=王^小東",
    "PatientName=Smith^John",
    "PatientName=smith^john",
    "PatientName=Smith^John^A^Dr^Jr",
    "PatientName=van der Berg^Jan",
    "PatientName=O'Brien^Mary Ann",
    "PatientName=de la Cruz^Jose Maria",
    "PatientName=Zoe^Angstrom",
    "PatientName=Διονυσίου^Ελένη",
    "PatientName=ΔΙΟΝΥΣΙΟΥ^ΕΛΕΝΗ",
    "PatientName=иванов^иван",
    "PatientName=Øster^Åse",
    "PatientName=Oster^Ase",
    "PatientName=Nguyen^Van An",
    "PatientName=Doe",
    "PatientName=Under_Score^Per%cent",
    "PatientName=Nobody^Here",
    "PatientName=Παπαδόπουλος^Νίκος",
    "PatientName=Papadopoulos^Nikos",
    # -- PatientName: wildcards
    "PatientName=Muller*",
    "PatientName=M?ller*",
    "PatientName=*hans*",
    "PatientName=*HANS",
    "PatientName=Smith*",
    "PatientName=Smith^J*",
    "PatientName=Smith^John^*",
    "PatientName=smi?h^joh?",
    "PatientName=*smith",
    "PatientName=van der berg*",
    "PatientName=D?e",
    "PatientName=Under_Score*",
    "PatientName=Under?Score*",
    "PatientName=Under_*",
    "PatientName=*Per%cent",
    "PatientName=*%*",
    "PatientName=山田*",
    "PatientName=*太郎",
    "PatientName=山?^*",
    "PatientName=Yamada*=山田^花子",
    "PatientName=*=山田^太郎",
    "PatientName=Y*郎",
    "PatientName=*太郎?やまだ*",
    "PatientName=Papa*",
    "PatientName=*Hidden",
    "PatientName=*",
    "PatientName=",
    # -- PatientName: fuzzy (every query word is a prefix of a word of the name)
    "PatientName=joh&fuzzymatching=true",
    "PatientName=smi jo&fuzzymatching=true",
    "PatientName=JOHN SMITH&fuzzymatching=true",
    "PatientName=Tar&fuzzymatching=true",
    "PatientName=山田&fuzzymatching=true",
    "PatientName=mar ann&fuzzymatching=true",
    "PatientName=müll&fuzzymatching=true",
    "PatientName=Berg&fuzzymatching=true",
    "PatientName=erg&fuzzymatching=true",
    "PatientName=Smith*&fuzzymatching=true",
    "PatientName=^&fuzzymatching=true",
    "PatientName=nik&fuzzymatching=true",
    "ReferringPhysicianName=james&fuzzymatching=true",
    # -- ReferringPhysicianName (multi-valued in some studies)
    "ReferringPhysicianName=Kildare^James",
    "ReferringPhysicianName=House^Gregory",
    "ReferringPhysicianName=Wilson^James",
    "ReferringPhysicianName=House*",
    "ReferringPhysicianName=Wil*",
    "ReferringPhysicianName=*James*",
    "ReferringPhysicianName=クイン^ミカエラ",
    "ReferringPhysicianName=*",
    # -- PatientID: case-sensitive, LIKE metacharacters are literal
    "PatientID=A_1",
    "PatientID=a_1",
    "PatientID=A?1",
    "PatientID=A_*",
    "PatientID=A%1",
    "PatientID=A%*",
    "PatientID=PID-0003",
    "PatientID=pid-0003",
    "PatientID=PID-000*",
    "PatientID=*-0012",
    "PatientID=PID 17",
    "PatientID=*7",
    "PatientID=HIDDEN",
    # -- dates and times
    "StudyDate=20200229",
    "StudyDate=19990304",
    "StudyDate=20150615",
    "StudyDate=20100101-",
    "StudyDate=-20001231",
    "StudyDate=20050101-20101231",
    "StudyDate=19980101-19981231",
    "StudyDate=20230201-20230331",
    "StudyTime=12",
    "StudyTime=1230",
    "StudyTime=120000-130000",
    "StudyTime=-0830",
    "StudyTime=2359-",
    "StudyTime=083000",
    "StudyTime=00",
    "StudyTime=1200-1200",
    "StudyDate=20100101-&StudyTime=-1200",
    "PatientBirthDate=-19600101",
    "PatientBirthDate=19700101-19891231",
    "PerformedProcedureStepStartDate=20100101-",
    "PerformedProcedureStepStartTime=07",
    "PerformedProcedureStepStartTime=0700-1200",
    "PerformedProcedureStepStartTime=2359-",
    # -- other strings (case-sensitive; `%` and `_` literal)
    "AccessionNumber=ACC0007",
    "AccessionNumber=acc0007",
    "AccessionNumber=ACC 77",
    "AccessionNumber=ACC001*",
    "AccessionNumber=ACC000?",
    "AccessionNumber=A%1",
    "StudyDescription=CT Chest",
    "StudyDescription=ct chest",
    "StudyDescription=*Chest*",
    "StudyDescription=Chest CT 50% dose",
    "StudyDescription=Chest?CT*",
    "StudyDescription=Chest_CT",
    "StudyDescription=*50%*",
    "StudyDescription=Abdomen^Pelvis",
    "StudyDescription=Knie rechts (ärztliche Kontrolle)",
    "StudyDescription=*ä*",
    "StudyID=S12",
    "StudyID=S1*",
    "PatientSex=F",
    "PatientSex=M,O",
    "SeriesDescription=Axial*",
    "SeriesDescription=*1mm",
    "SeriesDescription=Dose Report",
    # -- UIDs and code lists
    "StudyInstanceUID={S3}",
    "StudyInstanceUID={S3},{S5},{S44}",
    "StudyInstanceUID={S3}\\{DELETED_STUDY}",
    "StudyInstanceUID={DELETED_STUDY}",
    "ModalitiesInStudy=CT",
    "ModalitiesInStudy=MR",
    "ModalitiesInStudy=CT,MR",
    "ModalitiesInStudy=CT\\SEG",
    "ModalitiesInStudy=S*",
    "ModalitiesInStudy=?R",
    "ModalitiesInStudy=XA",
    "ModalitiesInStudy=ct",
    "ModalitiesInStudy=*",
    "Modality=CT",
    "Modality=SR\\SEG",
    "Modality=C*",
    "Modality=ct",
    "Modality=XA",
    "SeriesInstanceUID={R3_0}",
    "SeriesInstanceUID={R3_0},{R15_2},{R16_1}",
    "SeriesNumber=1",
    "SeriesNumber=3",
    "SeriesNumber=002",
    "SeriesNumber=99",
    "InstanceNumber=1",
    "InstanceNumber=4",
    "InstanceNumber=991",
    "InstanceNumber=990",
    "SOPClassUID=1.2.840.10008.5.1.4.1.1.2",
    "SOPClassUID=1.2.840.10008.5.1.4.1.1.2,1.2.840.10008.5.1.4.1.1.4",
    "SOPInstanceUID={I3_0_0}",
    "SOPInstanceUID={I3_0_0},{I15_2_0},{I16_1_0}",
    # -- combinations
    "PatientName=Smith*&ModalitiesInStudy=CT",
    "ModalitiesInStudy=CT&StudyDate=20000101-",
    "PatientID=PID-0003&StudyDate=-20150101",
    "PatientName=*&StudyDescription=*Chest*&ModalitiesInStudy=CT,MR",
    "ModalitiesInStudy=MR&Modality=CT",
    "PatientName=Smith*&Modality=CT",
    "Modality=MR&SeriesNumber=2&InstanceNumber=1",
    "StudyDate=20100101-&Modality=CT&InstanceNumber=2",
    "PatientName=*Hidden&Modality=XA",
    "",
]

# Adapter name -> query string -> why it differs from the reference matcher (reported upstream).
_FIRST_GROUP = (
    "SQL index: a name query that is ASCII after normalization is compared with the first non-empty "
    "component group only (an indexed column); the reference compares every group, so a Latin "
    "phonetic group after a non-Latin alphabetic one is not found"
)
_ACROSS_GROUPS = (
    "SQL index: a non-ASCII wildcard name query is one LIKE over '=G1=G2=G3=', where * and ? also "
    "match the '=' between component groups; the reference matches each group on its own"
)
_FIRST_VALUE = (
    "SQL index: only the first value of a multi-valued ReferringPhysicianName is indexed; the "
    "reference matches if any value does"
)
_SQL_DIFFERENCES = {  # every dialect of SqlMetadataIndex (checked on SQLite and PostgreSQL 15)
    "PatientName=Papadopoulos^Nikos": _FIRST_GROUP,
    "PatientName=Papa*": _FIRST_GROUP,
    "PatientName=Y*郎": _ACROSS_GROUPS,
    "PatientName=*太郎?やまだ*": _ACROSS_GROUPS,
    "ReferringPhysicianName=Wilson^James": _FIRST_VALUE,
    "ReferringPhysicianName=Wil*": _FIRST_VALUE,
    "ReferringPhysicianName=*James*": _FIRST_VALUE,
    "ReferringPhysicianName=james&fuzzymatching=true": _FIRST_VALUE,
}
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {"sqlite": _SQL_DIFFERENCES, "postgresql": _SQL_DIFFERENCES}

SCOPED: list[tuple[Level, str, str | None, str]] = [
    (Level.SERIES, "S0", None, ""),
    (Level.SERIES, "S15", None, "Modality=CT"),
    (Level.SERIES, "S16", None, "SeriesNumber=2"),
    (Level.SERIES, "S0", None, "StudyInstanceUID={S1}"),
    (Level.SERIES, "DELETED_STUDY", None, ""),
    (Level.INSTANCE, "S2", None, ""),
    (Level.INSTANCE, "S15", None, "InstanceNumber=1"),
    (Level.INSTANCE, "S3", "R3_0", ""),
    (Level.INSTANCE, "S15", "R15_2", "InstanceNumber=2"),
    (Level.INSTANCE, "S3", "R4_0", ""),
    (Level.INSTANCE, "S5", None, "PatientName=*&Modality=*"),
    (Level.INSTANCE, "S4", "R4_0", "PatientName=Nobody"),
]


class _Dummy(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "1.2.3"


def _levels(query_string: str) -> list[Level]:
    """The levels at which every key of the query applies (no key is ignored)."""
    text = query_string.format_map(_Dummy())
    return [level for level in Level if not query(level, text).ignored]


CASES = [(level, q) for q in QUERIES for level in _levels(q)]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus()


@pytest.fixture(scope="module")
def loaded(module_index: NamedIndex, corpus: Corpus) -> Iterator[tuple[str, MetadataIndex]]:
    index = module_index.connect()
    load(index, corpus)
    yield module_index.name, index


def hit_keys(hits: list[SearchHit]) -> list[Key]:
    return [(h.study, h.series, h.instance) for h in hits]


def known_difference(request: pytest.FixtureRequest, adapter: str, query_string: str) -> None:
    reason = KNOWN_DIFFERENCES.get(adapter, {}).get(query_string)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize(("level", "query_string"), CASES, ids=[f"{lv}:{q}" for lv, q in CASES])
def test_search_finds_what_the_reference_matcher_finds(
    request: pytest.FixtureRequest,
    loaded: tuple[str, MetadataIndex],
    corpus: Corpus,
    level: Level,
    query_string: str,
) -> None:
    adapter, index = loaded
    known_difference(request, adapter, query_string)
    q = query(level, query_string.format_map(corpus.placeholders))
    found = hit_keys(index.search(q))
    assert len(found) == len(set(found)), "no result twice"
    expected = corpus.expected(q)
    assert set(found) == expected, (
        f"missing {len(expected - set(found))}: {sorted(expected - set(found))[:5]}; "
        f"unexpected {len(set(found) - expected)}: {sorted(set(found) - expected)[:5]}"
    )


def test_the_query_table_finds_something_and_not_everything(corpus: Corpus) -> None:
    """Guard against a table of trivial cases: most queries select a proper, non-empty subset."""
    everything = {level: len(corpus.expected(query(level))) for level in Level}
    proper = 0
    for level, query_string in CASES:
        n = len(corpus.expected(query(level, query_string.format_map(corpus.placeholders))))
        proper += 0 < n < everything[level]
    assert proper >= 0.75 * len(CASES)
    assert everything == {Level.STUDY: 46, Level.SERIES: 80, Level.INSTANCE: 201}


@pytest.mark.parametrize(
    ("level", "study", "series", "query_string"),
    SCOPED,
    ids=[f"{lv}:{st}/{se}:{q}" for lv, st, se, q in SCOPED],
)
def test_search_is_scoped_by_the_path(
    loaded: tuple[str, MetadataIndex],
    corpus: Corpus,
    level: Level,
    study: str,
    series: str | None,
    query_string: str,
) -> None:
    _, index = loaded
    uids = corpus.placeholders
    q = query(
        level,
        query_string.format_map(uids),
        study_uid=uids[study],
        series_uid=uids[series] if series else None,
    )
    found = hit_keys(index.search(q))
    assert len(found) == len(set(found))
    assert set(found) == corpus.expected(q)
    assert {k[0] for k in found} <= {uids[study]}


# --- counts and ModalitiesInStudy ---------------------------------------------------------------


def _int(attrs: dict[str, object], keyword: str) -> int:
    elem = attrs[tag_of(keyword)]
    assert isinstance(elem, dict)
    return int(elem["Value"][0])


def test_study_hits_count_their_series_and_instances(
    loaded: tuple[str, MetadataIndex], corpus: Corpus
) -> None:
    _, index = loaded
    per_study, series_of, _ = corpus.instance_counts()
    hits = index.search(query(Level.STUDY))
    assert {h.study for h in hits} == set(per_study)
    for hit in hits:
        assert _int(hit.attrs, "NumberOfStudyRelatedSeries") == len(series_of[hit.study]), hit.study
        assert _int(hit.attrs, "NumberOfStudyRelatedInstances") == per_study[hit.study], hit.study


def test_study_hits_list_the_modalities_in_the_study(
    loaded: tuple[str, MetadataIndex], corpus: Corpus
) -> None:
    _, index = loaded
    modalities = corpus.modalities()
    for hit in index.search(query(Level.STUDY)):
        values = hit.attrs.get(tag_of("ModalitiesInStudy"), {}).get("Value", [])
        assert len(values) == len(set(values)), "each modality once"
        assert set(values) == modalities[hit.study], hit.study


def test_series_hits_count_their_instances(loaded: tuple[str, MetadataIndex], corpus: Corpus) -> None:
    _, index = loaded
    _, _, per_series = corpus.instance_counts()
    hits = index.search(query(Level.SERIES))
    assert {h.series for h in hits} == set(per_series)
    for hit in hits:
        assert _int(hit.attrs, "NumberOfSeriesRelatedInstances") == per_series[str(hit.series)]


def test_hits_carry_the_attributes_of_their_level_and_the_levels_above(
    loaded: tuple[str, MetadataIndex], corpus: Corpus
) -> None:
    """The QIDO layer shapes responses from hit.attrs and only reads the metadata blob for
    attributes the index does not keep, so the stored level attributes must come back as stored."""
    _, index = loaded
    by_instance = {r.uids.instance: r for r in corpus.records}
    by_series = {r.uids.series: r for r in corpus.records}
    by_study = {r.uids.study: r for r in corpus.records}
    for hit in index.search(query(Level.STUDY)):
        rec = by_study[hit.study]
        assert hit.attrs.items() >= rec.study_attrs.items()
    for hit in index.search(query(Level.SERIES)):
        rec = by_series[str(hit.series)]
        assert hit.attrs.items() >= (rec.study_attrs | rec.series_attrs).items()
    for hit in index.search(query(Level.INSTANCE)):
        rec = by_instance[str(hit.instance)]
        assert hit.attrs.items() >= (rec.study_attrs | rec.series_attrs | rec.instance_attrs).items()


# --- paging -------------------------------------------------------------------------------------

PAGED = [
    (Level.STUDY, ""),
    (Level.STUDY, "StudyDate=20050101-"),
    (Level.SERIES, ""),
    (Level.SERIES, "Modality=CT,MR"),
    (Level.INSTANCE, ""),
    (Level.INSTANCE, "StudyDescription=*Chest*"),
]


@pytest.mark.parametrize("page_size", [1, 7, 50])
@pytest.mark.parametrize(("level", "query_string"), PAGED, ids=[f"{lv}:{q}" for lv, q in PAGED])
def test_pages_concatenate_to_the_full_ordered_result(
    loaded: tuple[str, MetadataIndex], corpus: Corpus, level: Level, query_string: str, page_size: int
) -> None:
    _, index = loaded
    full = hit_keys(index.search(query(level, query_string)))
    assert set(full) == corpus.expected(query(level, query_string))
    pages: list[Key] = []
    offset = 0
    while True:
        page = hit_keys(index.search(query(level, query_string, limit=page_size, offset=offset)))
        assert len(page) <= page_size
        if not page:
            break
        pages += page
        offset += page_size
    assert pages == full
    assert len(set(pages)) == len(pages)


@pytest.mark.parametrize("level", list(Level))
def test_the_order_is_stable_and_an_offset_past_the_end_is_empty(
    loaded: tuple[str, MetadataIndex], level: Level
) -> None:
    _, index = loaded
    full = hit_keys(index.search(query(level)))
    assert hit_keys(index.search(query(level))) == full
    assert index.search(query(level, offset=len(full))) == []
    assert index.search(query(level, offset=10**6)) == []
    assert hit_keys(index.search(query(level, limit=3, offset=len(full) - 2))) == full[-2:]


def test_the_limit_caps_the_results(loaded: tuple[str, MetadataIndex]) -> None:
    _, index = loaded
    by_level: dict[Level, int] = defaultdict(int)
    for level in Level:
        by_level[level] = len(index.search(query(level, limit=5)))
    assert by_level == {Level.STUDY: 5, Level.SERIES: 5, Level.INSTANCE: 5}

"""QIDO-RS (PS3.18 10.6) through HTTP: every matching key of the issue by keyword and by tag,
wildcards, ranges, UID lists, fuzzy names, includefield, paging, computed attributes, errors.

A module fixture stores a small corpus of three studies whose PatientIDs and AccessionNumbers
share a unique prefix; every query is scoped by that prefix, so other tests' data never matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.datadict import tag_for_keyword

from tests.behaviour import DICOM_JSON, Instance, fresh, unique, value, values
from tests.behaviour.conftest import Server, ServerPool

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class Corpus:
    scope: str
    studies: list[list[Instance]]  # study -> its instances; study 0 has two series

    def study(self, number: int) -> str:
        return self.studies[number][0].study


STUDIES: list[dict[str, str]] = [
    {
        "PatientName": "Müller-Lüdenscheidt^Zoë",
        "StudyDate": "20200115",
        "StudyTime": "101530",
        "ReferringPhysicianName": "Welby^Marcus",
        "PatientBirthDate": "19700101",
        "StudyID": "SID1",
        "StudyDescription": "Chest CT",
        "PatientAge": "050Y",
        "PatientWeight": "70.5",
    },
    {
        "PatientName": "Smith^John",
        "StudyDate": "20210620",
        "StudyTime": "083000",
        "ReferringPhysicianName": "Jones^Jane",
        "PatientBirthDate": "19851231",
        "StudyID": "SID2",
        "StudyDescription": "Brain MR",
        "PatientAge": "035Y",
    },
    {
        "PatientName": "Smyth^Joan",
        "StudyDate": "20221201",
        "StudyTime": "235959",
        "ReferringPhysicianName": "Welby^Anna",
        "PatientBirthDate": "19990505",
        "StudyID": "SID3",
        "StudyDescription": "Abdomen CT",
        "PatientAge": "023Y",
    },
]


@pytest.fixture(scope="module")
def corpus(server: Server) -> Corpus:
    scope = unique("Q")
    studies: list[list[Instance]] = []
    for number, attrs in enumerate(STUDIES, start=1):
        common = dict(attrs, PatientID=f"{scope}-{number}", AccessionNumber=f"{scope}A{number}")
        if number == 1:
            a1 = fresh(
                "ct/CT_small.dcm",
                SeriesNumber="1",
                InstanceNumber="1",
                PerformedProcedureStepStartDate="20200115",
                **common,
            )
            a2 = fresh(
                "ct/CT_small.dcm",
                study=a1.study,
                series=a1.series,
                SeriesNumber="1",
                InstanceNumber="2",
                PerformedProcedureStepStartDate="20200115",
                **common,
            )
            b1 = fresh(
                "mr/MR_small.dcm",
                study=a1.study,
                SeriesNumber="2",
                InstanceNumber="1",
                PerformedProcedureStepStartDate="20200116",
                **common,
            )
            study = [a1, a2, b1]
        elif number == 2:
            study = [fresh("mr/MR_small.dcm", SeriesNumber="1", InstanceNumber="1", **common)]
        else:
            study = [fresh("ct/CT_small.dcm", SeriesNumber="5", InstanceNumber="3", **common)]
        server.stored(*study)
        studies.append(study)
    return Corpus(scope, studies)


def _key(name: str, form: str) -> str:
    return name if form == "keyword" or not name[0].isalpha() else f"{tag_for_keyword(name):08X}"


def _studies(server: Server, corpus: Corpus, params: dict[str, str], form: str = "keyword") -> set[int]:
    query = {_key(k, form): v for k, v in params.items()}
    if "PatientID" not in params and "00100020" not in params:
        query.setdefault(_key("PatientID", form), f"{corpus.scope}-*")
    else:
        query.setdefault(_key("AccessionNumber", form), f"{corpus.scope}A*")
    found = server.search("/studies", query)
    uids = [corpus.study(n) for n in range(3)]
    return {uids.index(uid) for uid in values(found, "0020000D")}


# (id, query params, expected studies by number); "{s0}" etc. are replaced by study UIDs
STUDY_QUERIES: list[tuple[str, dict[str, str], set[int]]] = [
    ("uid", {"StudyInstanceUID": "{s1}"}, {1}),
    ("uid-list-comma", {"StudyInstanceUID": "{s0},{s2}"}, {0, 2}),
    ("uid-list-backslash", {"StudyInstanceUID": "{s1}\\{s2}"}, {1, 2}),
    ("date", {"StudyDate": "20200115"}, {0}),
    ("date-range-closed", {"StudyDate": "20200101-20211231"}, {0, 1}),
    ("date-range-open-low", {"StudyDate": "-20201231"}, {0}),
    ("date-range-open-high", {"StudyDate": "20210101-"}, {1, 2}),
    ("time", {"StudyTime": "083000"}, {1}),
    ("time-range", {"StudyTime": "100000-235959"}, {0, 2}),
    ("time-range-open", {"StudyTime": "-090000"}, {1}),
    ("accession", {"AccessionNumber": "{scope}A2"}, {1}),
    ("accession-wildcard-?", {"AccessionNumber": "{scope}A?"}, {0, 1, 2}),
    ("modalities-mr", {"ModalitiesInStudy": "MR"}, {0, 1}),
    ("modalities-ct", {"ModalitiesInStudy": "CT"}, {0, 2}),
    ("modalities-list", {"ModalitiesInStudy": "MR,CT"}, {0, 1, 2}),
    ("referring", {"ReferringPhysicianName": "Welby^Marcus"}, {0}),
    ("referring-wildcard", {"ReferringPhysicianName": "Welby*"}, {0, 2}),
    ("name", {"PatientName": "Smith^John"}, {1}),
    ("name-wildcard-*", {"PatientName": "Sm*"}, {1, 2}),
    ("name-wildcard-?", {"PatientName": "Sm?th^Jo*"}, {1, 2}),
    ("name-unicode", {"PatientName": "Müller-Lüdenscheidt^Zoë"}, {0}),
    ("patient-id", {"PatientID": "{scope}-3"}, {2}),
    ("patient-id-wildcard", {"PatientID": "{scope}-*"}, {0, 1, 2}),
    ("birth-date", {"PatientBirthDate": "19851231"}, {1}),
    ("birth-date-range", {"PatientBirthDate": "19600101-19751231"}, {0}),
    ("study-id", {"StudyID": "SID3"}, {2}),
    ("description", {"StudyDescription": "Brain MR"}, {1}),
    ("description-wildcard", {"StudyDescription": "*CT"}, {0, 2}),
    ("combined", {"StudyDescription": "*CT", "StudyDate": "20220101-"}, {2}),
    ("universal", {"StudyDescription": "*"}, {0, 1, 2}),
    ("no-match", {"StudyDescription": "Nothing*"}, set()),
]


def _fill(params: dict[str, str], corpus: Corpus) -> dict[str, str]:
    names = {"scope": corpus.scope, **{f"s{n}": corpus.study(n) for n in range(3)}}
    return {k: v.format(**names) for k, v in params.items()}


@pytest.mark.parametrize("form", ["keyword", "tag"])
@pytest.mark.parametrize(
    ("params", "expected"), [q[1:] for q in STUDY_QUERIES], ids=[q[0] for q in STUDY_QUERIES]
)
def test_study_matching(
    server: Server, corpus: Corpus, params: dict[str, str], expected: set[int], form: str
) -> None:
    assert _studies(server, corpus, _fill(params, corpus), form) == expected


FUZZY = [
    ("lower-case", "muller", {0}),
    ("upper-accents", "MÜLLER", {0}),
    ("given-name-accent-free", "zoe", {0}),
    ("word-prefix", "smi", {1}),
    ("two-word-prefixes", "jo sm", {1, 2}),
    ("given-prefix", "jo", {1, 2}),
    ("caret", "smith^j", {1}),
]


@pytest.mark.parametrize(("name", "expected"), [f[1:] for f in FUZZY], ids=[f[0] for f in FUZZY])
def test_fuzzy_person_names(server: Server, corpus: Corpus, name: str, expected: set[int]) -> None:
    assert _studies(server, corpus, {"PatientName": name, "fuzzymatching": "true"}) == expected


def test_fuzzy_off_is_not_prefix_matching(server: Server, corpus: Corpus) -> None:
    assert _studies(server, corpus, {"PatientName": "smi", "fuzzymatching": "false"}) == set()


def test_percent_encoded_query_values(server: Server, corpus: Corpus) -> None:
    """dicomweb-client percent-encodes `*` as %2A and `^` as %5E."""
    scope = corpus.scope
    url = f"{server.root}/studies?PatientID={scope}-%2A&PatientName=Smith%5EJohn"
    response = server.get(url, DICOM_JSON)
    assert response.status_code == 200, response.text
    assert values(response.json(), "0020000D") == [corpus.study(1)]
    url = f"{server.root}/studies?PatientID={scope}-%2A&StudyDescription=%2ACT&StudyDate=20220101%2D"
    assert values(server.get(url, DICOM_JSON).json(), "0020000D") == [corpus.study(2)]


SERIES_QUERIES = [
    ("modality", {"Modality": "MR"}, {"b"}),
    ("series-uid", {"SeriesInstanceUID": "{a}"}, {"a"}),
    ("series-uid-list", {"SeriesInstanceUID": "{a},{b}"}, {"a", "b"}),
    ("series-number", {"SeriesNumber": "2"}, {"b"}),
    ("pps-date", {"PerformedProcedureStepStartDate": "20200115"}, {"a"}),
    ("pps-date-range", {"PerformedProcedureStepStartDate": "20200101-20200131"}, {"a", "b"}),
    ("pps-date-open", {"PerformedProcedureStepStartDate": "20200116-"}, {"b"}),
    ("all", {}, {"a", "b"}),
]


@pytest.mark.parametrize("form", ["keyword", "tag"])
@pytest.mark.parametrize(
    ("params", "expected"), [q[1:] for q in SERIES_QUERIES], ids=[q[0] for q in SERIES_QUERIES]
)
def test_series_matching(
    server: Server, corpus: Corpus, params: dict[str, str], expected: set[str], form: str
) -> None:
    a1, _, b1 = corpus.studies[0]
    names = {"a": a1.series, "b": b1.series}
    query = {_key(k, form): v.format(**names) for k, v in params.items()}
    found = server.search(f"/studies/{a1.study}/series", query)
    by_uid = {v: k for k, v in names.items()}
    assert {by_uid[uid] for uid in values(found, "0020000E")} == expected
    everywhere = server.search("/series", {**query, _key("StudyInstanceUID", form): a1.study})
    assert {by_uid[uid] for uid in values(everywhere, "0020000E")} == expected


INSTANCE_QUERIES = [
    ("sop-class-ct", {"SOPClassUID": CT_CLASS}, {"a1", "a2"}),
    ("sop-class-list", {"SOPClassUID": f"{CT_CLASS},{MR_CLASS}"}, {"a1", "a2", "b1"}),
    ("sop-instance", {"SOPInstanceUID": "{a2}"}, {"a2"}),
    ("instance-number", {"InstanceNumber": "1"}, {"a1", "b1"}),
    ("series-and-number", {"SeriesInstanceUID": "{sa}", "InstanceNumber": "2"}, {"a2"}),
    ("all", {}, {"a1", "a2", "b1"}),
]


@pytest.mark.parametrize("form", ["keyword", "tag"])
@pytest.mark.parametrize(
    ("params", "expected"), [q[1:] for q in INSTANCE_QUERIES], ids=[q[0] for q in INSTANCE_QUERIES]
)
def test_instance_matching(
    server: Server, corpus: Corpus, params: dict[str, str], expected: set[str], form: str
) -> None:
    a1, a2, b1 = corpus.studies[0]
    names = {"a1": a1.sop, "a2": a2.sop, "b1": b1.sop, "sa": a1.series}
    query = {_key(k, form): v.format(**names) for k, v in params.items()}
    by_uid = {a1.sop: "a1", a2.sop: "a2", b1.sop: "b1"}
    found = server.search(f"/studies/{a1.study}/instances", query)
    assert {by_uid[uid] for uid in values(found, "00080018")} == expected
    everywhere = server.search("/instances", {**query, _key("StudyInstanceUID", form): a1.study})
    assert {by_uid[uid] for uid in values(everywhere, "00080018")} == expected


def test_series_instances_path(server: Server, corpus: Corpus) -> None:
    a1, a2, _ = corpus.studies[0]
    found = server.search(f"/studies/{a1.study}/series/{a1.series}/instances")
    assert sorted(values(found, "00080018")) == sorted([a1.sop, a2.sop])
    for result in found:
        assert value(result, "0020000E") == a1.series
        assert (
            value(result, "00081190")
            == server.root + (a1 if value(result, "00080018") == a1.sop else a2).path
        )


def _one_study(server: Server, corpus: Corpus, number: int, **params: str) -> dict[str, Any]:
    (result,) = server.search("/studies", {"PatientID": f"{corpus.scope}-{number + 1}", **params})
    return result


def test_computed_study_attributes(server: Server, corpus: Corpus) -> None:
    result = _one_study(server, corpus, 0)
    assert sorted(result["00080061"]["Value"]) == ["CT", "MR"]
    assert result["00201206"]["Value"] == [2]
    assert result["00201208"]["Value"] == [3]
    series = server.search(f"/studies/{corpus.study(0)}/series")
    counts = {value(s, "00080060"): value(s, "00201209") for s in series}
    assert counts == {"CT": 2, "MR": 1}


def test_json_value_forms(server: Server, corpus: Corpus) -> None:
    result = _one_study(server, corpus, 0)
    assert result["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller-Lüdenscheidt^Zoë"}]}
    assert result["00080020"] == {"vr": "DA", "Value": ["20200115"]}
    assert result["00081190"]["Value"] == [f"{server.root}/studies/{corpus.study(0)}"]
    (series,) = server.search(f"/studies/{corpus.study(0)}/series", {"SeriesNumber": "2"})
    assert series["00200011"] == {"vr": "IS", "Value": [2]}
    (instance,) = server.search(f"/studies/{corpus.study(2)}/instances")
    assert instance["00200013"] == {"vr": "IS", "Value": [3]}


def test_includefield(server: Server, corpus: Corpus) -> None:
    plain = _one_study(server, corpus, 0)
    assert "00101010" not in plain and "00101030" not in plain  # PatientAge, PatientWeight
    listed = _one_study(server, corpus, 0, includefield="PatientAge,00081030")
    assert value(listed, "00101010") == "050Y"
    assert value(listed, "00081030") == "Chest CT"
    repeated = server.search(
        "/studies",
        [("PatientID", f"{corpus.scope}-1"), ("includefield", "PatientAge"), ("includefield", "00101030")],
    )
    assert value(repeated[0], "00101010") == "050Y"
    assert repeated[0]["00101030"] == {"vr": "DS", "Value": [70.5]}
    everything = _one_study(server, corpus, 0, includefield="all")
    assert value(everything, "00101010") == "050Y"
    assert value(everything, "00100020") == f"{corpus.scope}-1"


def test_ohif_study_list_query(server: Server, corpus: Corpus) -> None:
    """The exact study-list request of OHIF 3 (CLIENTS.md), plus a PatientID filter as typed."""
    response = server.get(
        "/studies",
        DICOM_JSON,
        params=[
            ("limit", "101"),
            ("offset", "0"),
            ("fuzzymatching", "false"),
            ("includefield", "00081030,00080060,00080090,00100030"),
            ("PatientID", f"{corpus.scope}-*"),
        ],
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(DICOM_JSON)
    results = response.json()
    assert sorted(values(results, "0020000D")) == sorted(corpus.study(n) for n in range(3))
    shown = [
        "0020000D",
        "00100010",
        "00100020",
        "00080020",
        "00080030",
        "00080050",
        "00081030",
        "00080061",
        "00201206",
        "00201208",
        "00100030",
    ]
    for result in results:
        missing = [tag for tag in shown if tag not in result]
        assert not missing, missing
    series = server.get(
        f"/studies/{corpus.study(0)}/series",
        DICOM_JSON,
        params={"includefield": "00080021,00080031,0008103E,00200011"},
    )
    assert series.status_code == 200
    assert len(series.json()) == 2


def test_study_paging_has_no_overlap_and_no_gaps(server: Server, corpus: Corpus) -> None:
    scope = {"PatientID": f"{corpus.scope}-*"}
    pages = [
        server.search("/studies", {**scope, "limit": "2", "offset": str(offset)}) for offset in (0, 2, 4)
    ]
    assert [len(p) for p in pages] == [2, 1, 0]
    uids = [uid for page in pages for uid in values(page, "0020000D")]
    assert sorted(uids) == sorted(corpus.study(n) for n in range(3))


def test_instance_paging_over_a_larger_series(server: Server) -> None:
    first = fresh("ct/ct2_series/CT2_17106.dcm")
    batch = [first] + [
        fresh("ct/ct2_series/CT2_17106.dcm", study=first.study, series=first.series) for _ in range(8)
    ]
    server.stored(*batch)
    path = f"/studies/{first.study}/series/{first.series}/instances"
    seen: list[str] = []
    for offset in range(0, 12, 4):
        page = server.search(path, {"limit": "4", "offset": str(offset)})
        assert len(page) == min(4, max(0, 9 - offset))
        seen += values(page, "00080018")
    assert sorted(seen) == sorted(i.sop for i in batch)


def test_limit_is_capped_by_the_settings(server: Server, servers: ServerPool) -> None:
    small = servers.get(server.backend, {"DICOMWEB_QIDO_DEFAULT_LIMIT": "2", "DICOMWEB_QIDO_MAX_LIMIT": "3"})
    first = fresh("ct/ct2_series/CT2_17106.dcm")
    small.stored(first, *[fresh("ct/ct2_series/CT2_17106.dcm", study=first.study) for _ in range(4)])
    path = f"/studies/{first.study}/instances"
    assert len(small.search(path)) == 2
    assert len(small.search(path, {"limit": "100"})) == 3


BAD_QUERIES = [
    ("bad-date", {"StudyDate": "20201301"}),
    ("not-a-date", {"StudyDate": "yesterday"}),
    ("bad-range", {"StudyDate": "2020-2021-2022"}),
    ("negative-offset", {"offset": "-1"}),
    ("bad-limit", {"limit": "ten"}),
    ("unknown-keyword", {"NoSuchKeyword": "1"}),
    ("unknown-includefield", {"includefield": "NoSuchKeyword"}),
    ("bad-uid", {"StudyInstanceUID": "1.2.abc"}),
    ("bad-fuzzy", {"fuzzymatching": "maybe"}),
    ("wildcard-in-date", {"StudyDate": "2020*"}),
]


@pytest.mark.parametrize("params", [b[1] for b in BAD_QUERIES], ids=[b[0] for b in BAD_QUERIES])
def test_invalid_queries_are_400(server: Server, params: dict[str, str]) -> None:
    response = server.get("/studies", DICOM_JSON, params=params)
    assert response.status_code == 400, response.text
    assert response.text.strip()


def test_real_but_unmatchable_attribute_is_ignored_with_a_warning(server: Server, corpus: Corpus) -> None:
    response = server.get(
        "/studies", DICOM_JSON, params={"PatientID": f"{corpus.scope}-1", "PatientAge": "999Y"}
    )
    assert response.status_code == 200, response.text
    assert values(response.json(), "0020000D") == [corpus.study(0)]
    warning = response.headers.get("warning", "")
    assert warning.startswith("299 ")
    assert "PatientAge" in warning


def test_empty_result_is_200_empty_list(server: Server) -> None:
    response = server.get("/studies", DICOM_JSON, params={"PatientID": unique("NOBODY")})
    assert response.status_code == 200
    assert response.json() == []
    assert server.search(f"/studies/{fresh('ct/CT_small.dcm').study}/series") == []


def test_search_accept_forms(server: Server, corpus: Corpus) -> None:
    params = {"PatientID": f"{corpus.scope}-2"}
    for accept in ("application/json", "*/*", f"{DICOM_JSON};q=0.9, application/xml;q=0.1"):
        assert server.get("/studies", accept, params=params).status_code == 200
    assert server.get("/studies", "application/dicom+xml", params=params).status_code == 406

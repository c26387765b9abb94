"""QIDO-RS query parsing (PS3.18 8.3.4) and the reference matcher (PS3.4 C.2.2.2)."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from shared.core.attributes import (
    DEFAULT_RETURN,
    MATCHABLE,
    Level,
    date_key,
    lookup_keyword,
    name_groups,
    name_words,
    normalize_name,
    tag_of,
    time_key,
)
from shared.core.errors import BadRequest
from shared.core.query import MAX_LIST_VALUES, Condition, MatchKind, Query, matches, parse_query
from shared.core.uids import is_valid_uid, require_uid

OHIF_STUDY_LIST = "limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060,00080090,00100030"
OHIF_INCLUDES = ("StudyDescription", "Modality", "ReferringPhysicianName", "PatientBirthDate")
S1, S2 = "1.2.840.113619.2.55.3.604688119", "1.3.6.1.4.1.5962.1.2.0.1175775771"


def qs(query_string: str) -> list[tuple[str, str]]:
    """What the HTTP layer hands over: the query string decoded once, blank values kept."""
    return parse_qsl(query_string, keep_blank_values=True)


def cond(keyword: str, kind: MatchKind, **fields: Any) -> Condition:
    return Condition(keyword, MATCHABLE[keyword].level, kind, **fields)


def study_query(**fields: Any) -> Query:
    defaults: dict[str, Any] = {
        "level": Level.STUDY,
        "study_uid": None,
        "series_uid": None,
        "conditions": (),
        "include_all": False,
        "include_fields": (),
        "limit": 100,
        "offset": 0,
        "fuzzy": False,
        "ignored": (),
    }
    return Query(**(defaults | fields))


E, SINGLE, WILD, RANGE, LIST, FUZZY = (
    MatchKind.EMPTY,
    MatchKind.SINGLE,
    MatchKind.WILDCARD,
    MatchKind.RANGE,
    MatchKind.UID_LIST,
    MatchKind.FUZZY,
)

# (id, query string, expected Query) for /studies
STUDY_CASES = [
    (
        "ohif-study-list",
        OHIF_STUDY_LIST,
        study_query(limit=101, include_fields=OHIF_INCLUDES),
    ),
    (
        "ohif-study-list-filters",
        OHIF_STUDY_LIST + "&PatientName=*smith*&00100020=*12*&AccessionNumber=*A1*"
        "&StudyDescription=*CHEST*&ModalitiesInStudy=CT&StudyDate=20230101-20231231",
        study_query(
            limit=101,
            include_fields=OHIF_INCLUDES,
            conditions=(
                cond("PatientName", WILD, value="*smith*"),
                cond("PatientID", WILD, value="*12*"),
                cond("AccessionNumber", WILD, value="*A1*"),
                cond("StudyDescription", WILD, value="*CHEST*"),
                cond("ModalitiesInStudy", SINGLE, value="CT"),
                cond("StudyDate", RANGE, low="20230101", high="20231231"),
            ),
        ),
    ),
    (
        "ohif-open-study",
        OHIF_STUDY_LIST + f"&StudyInstanceUID={S1}",
        study_query(
            limit=101, include_fields=OHIF_INCLUDES, conditions=(cond("StudyInstanceUID", SINGLE, value=S1),)
        ),
    ),
    (
        "ohif-uid-list-backslash",
        f"StudyInstanceUID={S1}%5C{S2}",
        study_query(conditions=(cond("StudyInstanceUID", LIST, values=(S1, S2)),)),
    ),
    (
        "uid-list-comma-duplicates-collapse",
        f"StudyInstanceUID={S1},{S2},{S1}",
        study_query(conditions=(cond("StudyInstanceUID", LIST, values=(S1, S2)),)),
    ),
    (
        "uid-list-of-one-is-single",
        f"StudyInstanceUID={S1},{S1}",
        study_query(conditions=(cond("StudyInstanceUID", SINGLE, value=S1),)),
    ),
    (
        "ohif-priors-by-tag",
        OHIF_STUDY_LIST + "&00100020=PID-7",
        study_query(
            limit=101, include_fields=OHIF_INCLUDES, conditions=(cond("PatientID", SINGLE, value="PID-7"),)
        ),
    ),
    (
        "dicomweb-client-encoded-star-is-universal",
        "PatientName=%2A",
        study_query(conditions=(cond("PatientName", E),)),
    ),
    (
        "dicomweb-client-encoded-wildcard",
        "PatientName=Sm%2A&PatientID=%3F%3F7",
        study_query(
            conditions=(cond("PatientName", WILD, value="Sm*"), cond("PatientID", WILD, value="??7"))
        ),
    ),
    (
        "dicomweb-client-encoded-caret",
        "PatientName=Doe%5EJohn",
        study_query(conditions=(cond("PatientName", SINGLE, value="Doe^John"),)),
    ),
    (
        "plus-is-space-and-values-are-trimmed",
        "StudyDescription=+CT+HEAD+",
        study_query(conditions=(cond("StudyDescription", SINGLE, value="CT HEAD"),)),
    ),
    (
        "value-decoded-only-once",
        "PatientID=%252A",
        study_query(conditions=(cond("PatientID", SINGLE, value="%2A"),)),
    ),
    (
        "tag-lowercase-and-keyword-any-case",
        "0020000d=&00100010=Doe&patientid=7",
        study_query(
            conditions=(
                cond("StudyInstanceUID", E),
                cond("PatientName", SINGLE, value="Doe"),
                cond("PatientID", SINGLE, value="7"),
            ),
        ),
    ),
    (
        "empty-value-is-universal",
        "PatientName=&StudyDate=&AccessionNumber=+",
        study_query(conditions=(cond("PatientName", E), cond("StudyDate", E), cond("AccessionNumber", E))),
    ),
    (
        "repeated-includefield",
        "includefield=00081030,00080060&includefield=all&includefield=StudyDescription",
        study_query(include_all=True, include_fields=("StudyDescription", "Modality")),
    ),
    (
        "includefield-list-tolerates-spaces-and-empty-items",
        "includefield=+00081030+,,PatientAge,",
        study_query(include_fields=("StudyDescription", "PatientAge")),
    ),
    (
        "includefield-sequence-path-includes-the-sequence",
        "includefield=00400275.00400009",
        study_query(include_fields=("RequestAttributesSequence",)),
    ),
    (
        "date-closed-range",
        "StudyDate=20230101-20230131",
        study_query(conditions=(cond("StudyDate", RANGE, low="20230101", high="20230131"),)),
    ),
    (
        "date-open-start",
        "StudyDate=-20230131",
        study_query(conditions=(cond("StudyDate", RANGE, high="20230131"),)),
    ),
    (
        "date-open-end",
        "PatientBirthDate=19700101-",
        study_query(conditions=(cond("PatientBirthDate", RANGE, low="19700101"),)),
    ),
    (
        "date-one-day-range",
        "StudyDate=20240229-20240229",
        study_query(conditions=(cond("StudyDate", RANGE, low="20240229", high="20240229"),)),
    ),
    (
        "date-single",
        "StudyDate=20240229",
        study_query(conditions=(cond("StudyDate", SINGLE, value="20240229"),)),
    ),
    (
        "time-single-covers-its-precision",
        "StudyTime=1230",
        study_query(conditions=(cond("StudyTime", RANGE, low="123000.000000", high="123059.999999"),)),
    ),
    (
        "time-range-partial",
        "StudyTime=08-1230",
        study_query(conditions=(cond("StudyTime", RANGE, low="080000.000000", high="123059.999999"),)),
    ),
    (
        "time-range-fraction",
        "StudyTime=080000.5-",
        study_query(conditions=(cond("StudyTime", RANGE, low="080000.500000"),)),
    ),
    (
        "modalities-list-comma-as-ohif-joins-arrays",
        "ModalitiesInStudy=CT,MR",
        study_query(conditions=(cond("ModalitiesInStudy", LIST, values=("CT", "MR")),)),
    ),
    (
        "modalities-list-backslash",
        "ModalitiesInStudy=CT%5CMR",
        study_query(conditions=(cond("ModalitiesInStudy", LIST, values=("CT", "MR")),)),
    ),
    (
        "lower-level-key-is-ignored",
        f"SOPInstanceUID={S1}&Modality=CT&SeriesInstanceUID=",
        study_query(ignored=("SOPInstanceUID", "Modality")),
    ),
    (
        "unmatchable-attribute-is-ignored-or-returned",
        "PatientWeight=70&Rows=512&PatientAge=&PatientName=Doe",
        study_query(
            conditions=(cond("PatientName", SINGLE, value="Doe"),),
            ignored=("PatientWeight", "Rows"),
            include_fields=("PatientAge",),
        ),
    ),
    (
        "sequence-path-key-is-ignored",
        "RequestAttributesSequence.RequestedProcedureID=RP1&00400275.00400009=",
        study_query(
            ignored=("RequestAttributesSequence.RequestedProcedureID",),
            include_fields=("RequestAttributesSequence",),
        ),
    ),
    (
        "control-names-any-case",
        "LIMIT=5&Offset=3&FuzzyMatching=TRUE&IncludeField=ALL",
        study_query(limit=5, offset=3, fuzzy=True, include_all=True),
    ),
    (
        "limit-above-maximum-is-clamped",
        "limit=5000",
        study_query(limit=1000),
    ),
    (
        "limit-huge-is-clamped",
        "limit=" + "9" * 40,
        study_query(limit=1000),
    ),
    (
        "limit-leading-zeros",
        "limit=007&offset=000",
        study_query(limit=7),
    ),
    (
        "fuzzy-person-names",
        "fuzzymatching=true&PatientName=joh+do&ReferringPhysicianName=Sm*&StudyDescription=CT",
        study_query(
            fuzzy=True,
            conditions=(
                cond("PatientName", FUZZY, value="joh do"),
                cond("ReferringPhysicianName", WILD, value="Sm*"),
                cond("StudyDescription", SINGLE, value="CT"),
            ),
        ),
    ),
    (
        "fuzzy-given-after-the-key",
        "PatientName=doe&fuzzymatching=true",
        study_query(fuzzy=True, conditions=(cond("PatientName", FUZZY, value="doe"),)),
    ),
    (
        "fuzzy-without-words-is-universal",
        "fuzzymatching=true&PatientName=%5E%5E",
        study_query(fuzzy=True, conditions=(cond("PatientName", E),)),
    ),
    (
        "name-component-groups-each-a-condition",
        "PatientName=Yamada%5ETarou%3D%E5%B1%B1%E7%94%B0*",
        study_query(
            conditions=(
                cond("PatientName", SINGLE, value="Yamada^Tarou"),
                cond("PatientName", WILD, value="山田*"),
            )
        ),
    ),
    (
        "name-universal-groups",
        "PatientName=*%3D*&ReferringPhysicianName=%5E%3D",
        study_query(conditions=(cond("PatientName", E), cond("ReferringPhysicianName", E))),
    ),
    (
        "name-empty-group-skipped",
        "PatientName=%3DDoe",
        study_query(conditions=(cond("PatientName", SINGLE, value="Doe"),)),
    ),
    (
        "accept-and-charset-left-to-the-http-layer",
        "accept=application%2Fdicom%2Bjson&charset=utf-8",
        study_query(),
    ),
    (
        "emptyvaluematching-false-is-fine",
        "emptyvaluematching=false&multiplevaluematching=False",
        study_query(),
    ),
    (
        "unsupported-matching-parameters-are-reported",
        "emptyvaluematching=true&multiplevaluematching=true",
        study_query(unsupported=("emptyvaluematching", "multiplevaluematching")),
    ),
]


@pytest.mark.parametrize(
    ("query_string", "expected"), [c[1:] for c in STUDY_CASES], ids=[c[0] for c in STUDY_CASES]
)
def test_parse_study_query(query_string: str, expected: Query) -> None:
    assert parse_query(Level.STUDY, qs(query_string)) == expected


# (id, level, path UIDs, query string, expected conditions, expected ignored)
LEVEL_CASES = [
    (
        "ohif-series-of-study",
        Level.SERIES,
        {"study_uid": S1},
        "includefield=00080021,00080031,0008103E,00200011",
        (),
        (),
    ),
    (
        "series-at-root-with-study-key",
        Level.SERIES,
        {},
        "Modality=CT&PatientID=7&SeriesNumber=007",
        (
            cond("Modality", SINGLE, value="CT"),
            cond("PatientID", SINGLE, value="7"),
            cond("SeriesNumber", SINGLE, value="7"),
        ),
        (),
    ),
    (
        "series-instance-key-ignored",
        Level.SERIES,
        {"study_uid": S1},
        "InstanceNumber=1&SOPClassUID=",
        (),
        ("InstanceNumber",),
    ),
    (
        "instances-of-series-all-levels",
        Level.INSTANCE,
        {"study_uid": S1, "series_uid": S2},
        "PatientName=Doe&Modality=MR&InstanceNumber=-2&SOPClassUID=1.2.840.10008.5.1.4.1.1.4",
        (
            cond("PatientName", SINGLE, value="Doe"),
            cond("Modality", SINGLE, value="MR"),
            cond("InstanceNumber", SINGLE, value="-2"),
            cond("SOPClassUID", SINGLE, value="1.2.840.10008.5.1.4.1.1.4"),
        ),
        (),
    ),
    (
        "instances-at-root",
        Level.INSTANCE,
        {},
        f"SOPInstanceUID={S1}&PerformedProcedureStepStartTime=0930",
        (
            cond("SOPInstanceUID", SINGLE, value=S1),
            cond("PerformedProcedureStepStartTime", RANGE, low="093000.000000", high="093059.999999"),
        ),
        (),
    ),
]


@pytest.mark.parametrize(
    ("level", "uids", "query_string", "conditions", "ignored"),
    [c[1:] for c in LEVEL_CASES],
    ids=[c[0] for c in LEVEL_CASES],
)
def test_parse_series_and_instance_queries(
    level: Level,
    uids: dict[str, str],
    query_string: str,
    conditions: tuple[Condition, ...],
    ignored: tuple[str, ...],
) -> None:
    query = parse_query(level, qs(query_string), **uids)
    assert (query.level, query.study_uid, query.series_uid) == (
        level,
        uids.get("study_uid"),
        uids.get("series_uid"),
    )
    assert query.conditions == conditions
    assert query.ignored == ignored


def test_ohif_series_query_includes_series_date_and_time() -> None:
    query = parse_query("series", qs("includefield=00080021,00080031,0008103E,00200011"), study_uid=S1)
    assert query.include_fields == ("SeriesDate", "SeriesTime", "SeriesDescription", "SeriesNumber")
    assert {"SeriesDate", "SeriesTime", "StudyInstanceUID", "SeriesInstanceUID"} <= set(
        query.return_keywords()
    )


# (id, level, path UIDs, query string, message fragment)
ERROR_CASES = [
    ("unknown-key", Level.STUDY, {}, "PatientNmae=Doe", "unknown query parameter or attribute: PatientNmae"),
    ("comma-tag-hint", Level.STUDY, {}, "0010,0010=Doe", "8 hex digits"),
    ("unknown-tag", Level.STUDY, {}, "00100011=x", "unknown query parameter or attribute: 00100011"),
    ("private-tag-key", Level.STUDY, {}, "00091001=x", "private attributes are not supported: 00091001"),
    ("unprintable-key-sanitized", Level.STUDY, {}, "Bad%0D%0AKey=1", "Bad??Key"),
    ("repeated-attribute", Level.STUDY, {}, "PatientID=1&PatientID=2", "PatientID is given more than once"),
    ("same-attribute-by-tag", Level.STUDY, {}, "PatientID=1&00100020=1", "PatientID is given more than once"),
    ("repeated-limit", Level.STUDY, {}, "limit=1&LIMIT=1", "limit parameter is given more than once"),
    ("limit-zero", Level.STUDY, {}, "limit=0", "limit parameter must be a positive integer"),
    ("limit-negative", Level.STUDY, {}, "limit=-1", "limit parameter must be a positive integer"),
    ("limit-not-integer", Level.STUDY, {}, "limit=1.5", "limit parameter must be a positive integer"),
    ("limit-underscore", Level.STUDY, {}, "limit=1_0", "limit parameter must be a positive integer"),
    ("limit-empty", Level.STUDY, {}, "limit=", "limit parameter must be a positive integer"),
    ("offset-negative", Level.STUDY, {}, "offset=-1", "offset parameter must be a non-negative integer"),
    ("offset-text", Level.STUDY, {}, "offset=ten", "offset parameter must be a non-negative integer"),
    ("offset-huge", Level.STUDY, {}, "offset=99999999999", "offset parameter must not exceed"),
    (
        "fuzzy-not-boolean",
        Level.STUDY,
        {},
        "fuzzymatching=yes",
        "fuzzymatching parameter must be true or false",
    ),
    ("fuzzy-empty", Level.STUDY, {}, "fuzzymatching=", "fuzzymatching parameter must be true or false"),
    ("fuzzy-repeated", Level.STUDY, {}, "fuzzymatching=true&fuzzymatching=true", "given more than once"),
    (
        "emptyvalue-not-boolean",
        Level.STUDY,
        {},
        "emptyvaluematching=1",
        "emptyvaluematching parameter must be",
    ),
    (
        "includefield-unknown",
        Level.STUDY,
        {},
        "includefield=00081030,Foo",
        "includefield: unknown attribute: Foo",
    ),
    ("includefield-unknown-tag", Level.STUDY, {}, "includefield=00081031", "includefield: unknown attribute"),
    ("includefield-private", Level.STUDY, {}, "includefield=00291010", "includefield: private attributes"),
    (
        "includefield-not-sequence",
        Level.STUDY,
        {},
        "includefield=PatientName.PatientID",
        "not a sequence path",
    ),
    (
        "date-not-calendar",
        Level.STUDY,
        {},
        "StudyDate=20230230",
        "StudyDate: invalid value (expected YYYYMMDD)",
    ),
    ("date-iso-format", Level.STUDY, {}, "StudyDate=2023-01-01", "StudyDate: invalid range"),
    ("date-range-invalid-end", Level.STUDY, {}, "StudyDate=20230101-20230230", "StudyDate: invalid range"),
    (
        "date-range-reversed",
        Level.STUDY,
        {},
        "StudyDate=20230201-20230101",
        "start of the range is after its end",
    ),
    ("date-range-no-bounds", Level.STUDY, {}, "StudyDate=-", "StudyDate: invalid range"),
    ("date-wildcard", Level.STUDY, {}, "StudyDate=2023*", "wild cards are not allowed"),
    ("date-short", Level.STUDY, {}, "PatientBirthDate=202301", "PatientBirthDate: invalid value"),
    ("time-hour-25", Level.STUDY, {}, "StudyTime=25", "StudyTime: invalid value (expected HHMMSS)"),
    ("time-minute-61", Level.STUDY, {}, "StudyTime=1261", "StudyTime: invalid value"),
    ("time-colons", Level.STUDY, {}, "StudyTime=12:30", "StudyTime: invalid value"),
    ("time-range-reversed", Level.STUDY, {}, "StudyTime=1230-1200", "start of the range is after its end"),
    (
        "uid-leading-zero",
        Level.STUDY,
        {},
        "StudyInstanceUID=1.2.03",
        "StudyInstanceUID: not a valid DICOM UID",
    ),
    ("uid-wildcard", Level.STUDY, {}, "StudyInstanceUID=1.2.*", "wild cards are not allowed"),
    ("uid-list-empty-item", Level.STUDY, {}, f"StudyInstanceUID={S1},,{S2}", "empty value in a list"),
    ("uid-list-bad-item", Level.STUDY, {}, f"StudyInstanceUID={S1},1..2", "not a valid DICOM UID"),
    (
        "uid-list-too-long",
        Level.STUDY,
        {},
        "StudyInstanceUID=" + ",".join(f"1.2.{n}" for n in range(MAX_LIST_VALUES + 1)),
        f"more than {MAX_LIST_VALUES} values",
    ),
    ("integer-text", Level.SERIES, {}, "SeriesNumber=one", "SeriesNumber: expected an integer"),
    ("integer-wildcard", Level.SERIES, {}, "SeriesNumber=1*", "wild cards are not allowed"),
    ("string-multiple-values", Level.STUDY, {}, "PatientID=A%5CB", "multiple values are not supported"),
    ("code-list-with-wildcard", Level.STUDY, {}, "ModalitiesInStudy=CT,M*", "wild cards cannot be combined"),
    ("path-study-uid", Level.SERIES, {"study_uid": "1.2.abc"}, "", "Invalid Study Instance UID in the path"),
    (
        "path-series-uid",
        Level.INSTANCE,
        {"study_uid": S1, "series_uid": "01.2"},
        "",
        "Invalid Series Instance UID in the path",
    ),
]


@pytest.mark.parametrize(
    ("level", "uids", "query_string", "message"),
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_invalid_queries_are_bad_requests(
    level: Level, uids: dict[str, str], query_string: str, message: str
) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_query(level, qs(query_string), **uids)
    assert raised.value.status == 400
    assert message in raised.value.message


@pytest.mark.parametrize(
    "query_string",
    ["PatientName=Secret%5CName", "PatientID=Secret%5CName", "StudyDate=Secret", "StudyInstanceUID=Secret"],
    ids=["name", "id", "date", "uid"],
)
def test_error_messages_never_echo_values(query_string: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_query(Level.STUDY, qs(query_string))
    assert "Secret" not in raised.value.message


@pytest.mark.parametrize(
    ("level", "uids"),
    [
        (Level.STUDY, {"study_uid": S1}),
        (Level.SERIES, {"study_uid": S1, "series_uid": S2}),
        (Level.INSTANCE, {"series_uid": S2}),
    ],
    ids=["study-with-uid", "series-with-series-uid", "series-uid-without-study"],
)
def test_impossible_paths_are_programming_errors(level: Level, uids: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="path"):
        parse_query(level, [], **uids)


@pytest.mark.parametrize(
    ("default", "maximum", "expected"),
    [(100, 1000, 100), (5000, 1000, 1000)],
    ids=["default", "default-clamped"],
)
def test_limit_defaults(default: int, maximum: int, expected: int) -> None:
    assert parse_query(Level.STUDY, [], default_limit=default, max_limit=maximum).limit == expected


def test_query_is_frozen_and_hashable() -> None:
    query = parse_query(Level.STUDY, qs(OHIF_STUDY_LIST))
    with pytest.raises(dataclasses.FrozenInstanceError):
        query.limit = 5  # type: ignore[misc]
    assert hash(query) == hash(parse_query(Level.STUDY, qs(OHIF_STUDY_LIST)))


def test_warnings_name_ignored_attributes_and_unsupported_parameters() -> None:
    query = parse_query(Level.STUDY, qs("PatientWeight=70&SOPInstanceUID=1.2&emptyvaluematching=true"))
    assert query.warnings() == (
        "The emptyvaluematching parameter is not supported. Empty Value Matching has not been performed.",
        "The following attributes are not supported for matching and were ignored: "
        "PatientWeight, SOPInstanceUID",
    )
    assert parse_query(Level.STUDY, qs(OHIF_STUDY_LIST)).warnings() == ()


@pytest.mark.parametrize(
    ("level", "uids", "included", "excluded"),
    [
        (Level.STUDY, {}, {"NumberOfStudyRelatedInstances", "ModalitiesInStudy"}, {"Modality", "Rows"}),
        (Level.SERIES, {"study_uid": S1}, {"Modality", "NumberOfSeriesRelatedInstances"}, {"PatientName"}),
        (Level.SERIES, {}, {"Modality", "PatientName", "NumberOfStudyRelatedSeries"}, {"Rows"}),
        (Level.INSTANCE, {"study_uid": S1, "series_uid": S2}, {"Rows", "NumberOfFrames"}, {"Modality"}),
        (Level.INSTANCE, {"study_uid": S1}, {"Rows", "Modality"}, {"PatientName"}),
        (Level.INSTANCE, {}, {"Rows", "Modality", "PatientName"}, set()),
    ],
    ids=["studies", "study-series", "all-series", "series-instances", "study-instances", "all-instances"],
)
def test_return_keywords_per_resource(
    level: Level, uids: dict[str, str], included: set[str], excluded: set[str]
) -> None:
    keywords = parse_query(level, qs("StudyDescription=&includefield=PatientAge"), **uids).return_keywords()
    assert included | {"StudyDescription", "PatientAge"} <= set(keywords)
    assert not excluded & set(keywords)
    assert len(keywords) == len(set(keywords))


# -- the reference matcher -----------------------------------------------------------------------


def query_matches(
    key: str, value: str, stored: str | list[str] | None, level: Level = Level.INSTANCE
) -> bool:
    """Parse `key=value` (fuzzy when the key ends with ~) and match every condition."""
    fuzzy = key.endswith("~")
    params = [(key.rstrip("~"), value)] + ([("fuzzymatching", "true")] if fuzzy else [])
    conditions = parse_query(level, params).conditions
    assert conditions
    return all(matches(condition, stored) for condition in conditions)


# (id, key, query value, stored value, expected)
MATCH_CASES: list[tuple[str, str, str, str | list[str] | None, bool]] = [
    ("pn-case-insensitive", "PatientName", "doe^john", "DOE^JOHN", True),
    ("pn-accent-insensitive-stored", "PatientName", "Muller^Hans", "Müller^Hans", True),
    ("pn-accent-insensitive-query", "PatientName", "Müller", "MULLER", True),
    ("pn-trailing-empty-components", "PatientName", "Doe^John", "Doe^John^^^", True),
    ("pn-single-is-whole-value", "PatientName", "Doe", "Doe^John", False),
    ("pn-wildcard-prefix", "PatientName", "doe*", "Doe^John", True),
    ("pn-wildcard-infix", "PatientName", "*john*", "Doe^John^^Dr", True),
    ("pn-wildcard-question", "PatientName", "*j?hn", "Doe^Jahn", True),
    ("pn-wildcard-whole-value", "PatientName", "j?hn*", "Doe^John", False),
    ("pn-ideographic-group", "PatientName", "山田^太郎", "Yamada^Tarou=山田^太郎=やまだ^たろう", True),
    ("pn-two-groups-both-found", "PatientName", "Yamada^Tarou=山田^太郎", "Yamada^Tarou=山田^太郎", True),
    ("pn-two-groups-one-missing", "PatientName", "Yamada^Tarou=山本^太郎", "Yamada^Tarou=山田^太郎", False),
    ("pn-kana-voicing-kept", "PatientName", "カ*", "=がっこう=ガッコウ", False),
    ("pn-kana-voiced", "PatientName", "ガ*", "=がっこう=ガッコウ", True),
    ("pn-fullwidth-letters", "PatientName", "smith", "ＳＭＩＴＨ", True),  # noqa: RUF001
    ("pn-multi-valued-list", "ReferringPhysicianName", "smith", ["Doe^J", "Smith"], True),
    ("pn-multi-valued-backslash", "ReferringPhysicianName", "smith", "Doe^J\\Smith", True),
    ("pn-missing", "PatientName", "Doe", None, False),
    ("pn-empty", "PatientName", "Doe", "", False),
    ("pn-universal-matches-missing", "PatientName", "*", None, True),
    ("fuzzy-prefixes-any-order", "PatientName~", "joh do", "Doe^John", True),
    ("fuzzy-one-prefix", "PatientName~", "jo", "Doe^John", True),
    ("fuzzy-every-word-needed", "PatientName~", "john x", "Doe^John", False),
    ("fuzzy-not-infix", "PatientName~", "ohn", "Doe^John", False),
    ("fuzzy-accents", "PatientName~", "muller", "Müller-Lüdenscheidt^Hans", True),
    ("fuzzy-other-group", "PatientName~", "山田", "Yamada^Tarou=山田^太郎", True),
    ("fuzzy-missing", "PatientName~", "doe", None, False),
    ("lo-case-sensitive", "StudyDescription", "chest", "CHEST", False),
    ("lo-surrounding-spaces", "StudyDescription", "CHEST", " CHEST ", True),
    ("lo-wildcard-infix", "StudyDescription", "*CHEST*", "CT CHEST PA", True),
    ("lo-wildcard-case-sensitive", "StudyDescription", "*chest*", "CT CHEST PA", False),
    ("lo-question-one-char", "StudyDescription", "CT?", "CTA", True),
    ("lo-question-not-zero", "StudyDescription", "CT?", "CT", False),
    ("lo-regex-characters-literal", "StudyDescription", "a.b*", "axb", False),
    ("lo-brackets-literal", "StudyDescription", "(1) [x]*", "(1) [x] y", True),
    ("lo-universal-matches-missing", "PatientID", "*", None, True),
    ("lo-empty-matches-missing", "PatientID", "", None, True),
    ("sh-single", "AccessionNumber", "A1", "A1", True),
    ("sh-single-other", "AccessionNumber", "A1", "A12", False),
    ("ui-single", "StudyInstanceUID", "1.2.3", "1.2.3", True),
    ("ui-padding", "StudyInstanceUID", "1.2.3", "1.2.3\0", True),
    ("ui-not-prefix", "StudyInstanceUID", "1.2.3", "1.2.30", False),
    ("ui-list-hit", "StudyInstanceUID", "1.2.3,1.2.4", "1.2.4", True),
    ("ui-list-miss", "StudyInstanceUID", "1.2.3\\1.2.4", "1.2.5", False),
    ("cs-single", "Modality", "CT", "CT", True),
    ("cs-case-sensitive", "Modality", "ct", "CT", False),
    ("cs-multi-valued-list", "ModalitiesInStudy", "MR", ["CT", "MR"], True),
    ("cs-multi-valued-backslash", "ModalitiesInStudy", "MR", "CT\\MR", True),
    ("cs-list-any", "ModalitiesInStudy", "CT,MR", ["US", "MR"], True),
    ("cs-list-none", "ModalitiesInStudy", "CT,MR", ["US"], False),
    ("cs-wildcard-any-value", "ModalitiesInStudy", "C*", ["MR", "CT"], True),
    ("cs-missing", "Modality", "CT", None, False),
    ("da-single", "StudyDate", "20230101", "20230101", True),
    ("da-single-legacy-stored", "StudyDate", "20230101", "2023.01.01", True),
    ("da-single-other", "StudyDate", "20230101", "20230102", False),
    ("da-range-inside", "StudyDate", "20230101-20230131", "20230115", True),
    ("da-range-start-inclusive", "StudyDate", "20230101-20230131", "20230101", True),
    ("da-range-end-inclusive", "StudyDate", "20230101-20230131", "20230131", True),
    ("da-range-after", "StudyDate", "20230101-20230131", "20230201", False),
    ("da-open-start", "StudyDate", "-20230101", "19991231", True),
    ("da-open-end", "StudyDate", "20230101-", "20991231", True),
    ("da-open-end-before", "StudyDate", "20230101-", "20221231", False),
    ("da-stored-invalid", "StudyDate", "20230101-", "2023", False),
    ("da-stored-missing", "StudyDate", "20230101-", None, False),
    ("tm-hour-precision", "StudyTime", "12", "123456", True),
    ("tm-hour-precision-next", "StudyTime", "12", "1300", False),
    ("tm-minute-precision", "StudyTime", "1230", "123059.999", True),
    ("tm-stored-partial", "StudyTime", "123000", "1230", True),
    ("tm-range-inside", "StudyTime", "0800-1200", "115959", True),
    ("tm-range-end-precision", "StudyTime", "0800-1200", "120059", True),
    ("tm-range-after", "StudyTime", "0800-1200", "120100", False),
    ("tm-open-start", "StudyTime", "-0800", "0759", True),
    ("tm-legacy-stored", "StudyTime", "0800-0900", "08:30:00", True),
    ("tm-stored-invalid", "StudyTime", "0800-0900", "8h30", False),
    ("is-leading-zeros", "SeriesNumber", "7", "007", True),
    ("is-spaces", "SeriesNumber", "007", " 7 ", True),
    ("is-other", "SeriesNumber", "7", "8", False),
    ("is-negative", "InstanceNumber", "-1", "-1", True),
    ("is-stored-garbage", "SeriesNumber", "7", "x", False),
]


@pytest.mark.parametrize(
    ("key", "value", "stored", "expected"), [c[1:] for c in MATCH_CASES], ids=[c[0] for c in MATCH_CASES]
)
def test_reference_matcher(key: str, value: str, stored: str | list[str] | None, expected: bool) -> None:
    assert query_matches(key, value, stored) is expected


# -- value keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normalized", "words", "groups"),
    [
        ("Müller^Hans^^Dr", "MULLER HANS DR", ["MULLER", "HANS", "DR"], ["MULLER HANS DR"]),
        ("  doe ^ john  ", "DOE JOHN", ["DOE", "JOHN"], ["DOE JOHN"]),
        (
            "Yamada^Tarou=山田^太郎=",
            "YAMADA TAROU 山田 太郎",
            ["YAMADA", "TAROU", "山田", "太郎"],
            ["YAMADA TAROU", "山田 太郎"],
        ),
        ("Çelik^Ömer", "CELIK OMER", ["CELIK", "OMER"], ["CELIK OMER"]),
        ("Strauß", "STRAUSS", ["STRAUSS"], ["STRAUSS"]),
        ("ガッコウ", "ガッコウ", ["ガッコウ"], ["ガッコウ"]),
        ("sm*th^?", "SM*TH ?", ["SM*TH", "?"], ["SM*TH ?"]),
        ("^^=", "", [], []),
    ],
    ids=["accents", "spaces", "groups", "cedilla", "sharp-s", "kana", "wildcards", "empty"],
)
def test_name_keys(value: str, normalized: str, words: list[str], groups: list[str]) -> None:
    assert normalize_name(value) == normalized
    assert name_words(value) == words
    assert name_groups(value) == groups


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240229", "20240229"),
        ("2024.02.29", "20240229"),
        (" 20240229 ", "20240229"),
        ("20230229", None),
        ("2024", None),
        ("2024.0229", None),
        ("00000101", None),
        ("٢٠٢٤٠٢٢٩", None),
    ],
    ids=["plain", "legacy", "padded", "not-leap-year", "year-only", "mixed", "year-zero", "arabic-digits"],
)
def test_date_key(value: str, expected: str | None) -> None:
    assert date_key(value) == expected


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("07", "070000.000000", "075959.999999"),
        ("0730", "073000.000000", "073059.999999"),
        ("073015.25", "073015.250000", "073015.259999"),
        ("07:30:15", "073015.000000", "073015.999999"),
        ("235960", "235960.000000", "235960.999999"),
        ("24", None, None),
        ("0760", None, None),
        ("7", None, None),
        ("073015.1234567", None, None),
    ],
    ids=[
        "hour",
        "minute",
        "fraction",
        "legacy",
        "leap-second",
        "hour-24",
        "minute-60",
        "one-digit",
        "long-fraction",
    ],
)
def test_time_key(value: str, low: str | None, high: str | None) -> None:
    assert (time_key(value), time_key(value, upper=True)) == (low, high)


# -- attributes and UIDs -------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", sorted(MATCHABLE), ids=sorted(MATCHABLE))
def test_matchable_table_agrees_with_the_dictionary(keyword: str) -> None:
    attribute = MATCHABLE[keyword]
    assert attribute.tag == f"{tag_for_keyword(keyword):08X}" == tag_of(keyword)
    assert attribute.vr == dictionary_VR(attribute.tag)
    assert lookup_keyword(attribute.tag.lower()) == keyword


@pytest.mark.parametrize("level", list(Level), ids=[level.value for level in Level])
def test_default_return_keywords_are_dictionary_keywords(level: Level) -> None:
    keywords = DEFAULT_RETURN[level]
    assert all(tag_for_keyword(keyword) is not None for keyword in keywords)
    assert len(set(keywords)) == len(keywords)


def test_required_matching_keys_are_matchable() -> None:
    required = {
        Level.STUDY: {
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ModalitiesInStudy",
            "ReferringPhysicianName",
            "PatientName",
            "PatientID",
            "StudyInstanceUID",
            "StudyID",
        },
        Level.SERIES: {
            "Modality",
            "SeriesInstanceUID",
            "SeriesNumber",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
        },
        Level.INSTANCE: {"SOPClassUID", "SOPInstanceUID", "InstanceNumber"},
    }
    for level, keywords in required.items():
        assert {k for k, a in MATCHABLE.items() if a.level is level} >= keywords


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.1.2.1", True),
        ("0", True),
        ("1.0.3", True),
        ("1." + "2" * 62, True),
        ("1." + "2" * 63, False),
        ("", False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.02", False),
        ("1.2.3a", False),
        ("1.2.3 ", False),
        ("1.2.3\0", False),
        ("1.2.٣", False),
    ],
    ids=[
        "typical",
        "zero",
        "zero-component",
        "64-chars",
        "65-chars",
        "empty",
        "empty-component",
        "leading-dot",
        "trailing-dot",
        "leading-zero",
        "letter",
        "trailing-space",
        "nul-padding",
        "arabic-digit",
    ],
)
def test_is_valid_uid(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


def test_require_uid_names_what_and_not_the_value() -> None:
    assert require_uid(S1, "Study Instance UID") == S1
    with pytest.raises(BadRequest, match="Invalid Study Instance UID: not a valid DICOM UID") as raised:
        require_uid("1.2.secret", "Study Instance UID")
    assert "secret" not in raised.value.message

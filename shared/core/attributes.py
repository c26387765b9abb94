"""The attributes QIDO-RS can match on and returns, per level, and how their values compare.

The matchable keys are the required matching keys of PS3.18 section 10.6.1 (Table 10.6.1-5 in
recent editions) plus a few that viewers use (PatientBirthDate, PatientSex, StudyDescription,
SeriesDescription). The default return lists follow the Search response tables of PS3.18
(Tables 10.6.3-3/-4/-5) with the unique keys of the higher levels added, since viewers read them.

Value keys: the index adapters build their search columns with `normalize_name`, `name_groups`,
`name_words`, `date_key` and `time_key`, and the reference matcher in `shared.core.query` uses the
same functions, so that every adapter compares values exactly as the matcher does.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from functools import cache

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword


class Level(StrEnum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"

    @property
    def depth(self) -> int:
        """0 for study, 1 for series, 2 for instance: a key is usable at its depth or deeper."""
        return _DEPTH[self]


_DEPTH = {Level.STUDY: 0, Level.SERIES: 1, Level.INSTANCE: 2}


@dataclass(frozen=True, slots=True)
class Attribute:
    """A matchable attribute: its keyword, tag (8 upper-case hex digits), VR and level."""

    keyword: str
    tag: str
    vr: str
    level: Level
    multi_valued: bool = False


_S, _R, _I = Level.STUDY, Level.SERIES, Level.INSTANCE

MATCHABLE: Mapping[str, Attribute] = {
    a.keyword: a
    for a in (
        Attribute("StudyInstanceUID", "0020000D", "UI", _S),
        Attribute("StudyDate", "00080020", "DA", _S),
        Attribute("StudyTime", "00080030", "TM", _S),
        Attribute("AccessionNumber", "00080050", "SH", _S),
        Attribute("ModalitiesInStudy", "00080061", "CS", _S, multi_valued=True),
        Attribute("ReferringPhysicianName", "00080090", "PN", _S),
        Attribute("PatientName", "00100010", "PN", _S),
        Attribute("PatientID", "00100020", "LO", _S),
        Attribute("PatientBirthDate", "00100030", "DA", _S),
        Attribute("PatientSex", "00100040", "CS", _S),
        Attribute("StudyID", "00200010", "SH", _S),
        Attribute("StudyDescription", "00081030", "LO", _S),
        Attribute("Modality", "00080060", "CS", _R),
        Attribute("SeriesInstanceUID", "0020000E", "UI", _R),
        Attribute("SeriesNumber", "00200011", "IS", _R),
        Attribute("SeriesDescription", "0008103E", "LO", _R),
        Attribute("PerformedProcedureStepStartDate", "00400244", "DA", _R),
        Attribute("PerformedProcedureStepStartTime", "00400245", "TM", _R),
        Attribute("SOPClassUID", "00080016", "UI", _I),
        Attribute("SOPInstanceUID", "00080018", "UI", _I),
        Attribute("InstanceNumber", "00200013", "IS", _I),
    )
}
"""Keyword -> attribute, for every attribute the server can match on."""

STUDY_RETURN_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "StudyDescription",
)
SERIES_RETURN_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "RetrieveURL",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
INSTANCE_RETURN_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
DEFAULT_RETURN: Mapping[Level, tuple[str, ...]] = {
    Level.STUDY: STUDY_RETURN_KEYWORDS,
    Level.SERIES: SERIES_RETURN_KEYWORDS,
    Level.INSTANCE: INSTANCE_RETURN_KEYWORDS,
}
"""The attributes every search result of a level carries (when the server knows them)."""


# -- attribute names -----------------------------------------------------------------------------

_TAG = re.compile(r"[0-9A-Fa-f]{8}")


@cache
def _keywords_by_lower_case() -> dict[str, str]:
    return {keyword.lower(): keyword for keyword in keyword_dict if keyword}


def is_tag(name: str) -> bool:
    """True if `name` has the form of a tag in a query (8 hex digits, any case)."""
    return _TAG.fullmatch(name) is not None


def is_private_tag(name: str) -> bool:
    """True if `name` is an 8-hex-digit tag of a private group (odd group number)."""
    return is_tag(name) and int(name[:4], 16) % 2 == 1


def lookup_keyword(name: str) -> str | None:
    """The DICOM keyword for a keyword (case-insensitive) or an 8-hex-digit tag; None if unknown.

    Private tags, repeating-group tags (50xx, 60xx) and tags missing from the PS3.6 dictionary
    are unknown.
    """
    if is_tag(name):
        tag = int(name, 16)
        return (keyword_for_tag(tag) or None) if dictionary_has_tag(tag) else None
    if tag_for_keyword(name) is not None:
        return name
    return _keywords_by_lower_case().get(name.lower())


def tag_of(keyword: str) -> str:
    """The 8 upper-case hex digits of a keyword's tag (as DICOM JSON keys them)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def vr_of(keyword: str) -> str:
    """The VR of a keyword in the PS3.6 dictionary ('SQ' for sequences)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return dictionary_VR(tag)


# -- value keys ----------------------------------------------------------------------------------

# Combining marks that are accents of Latin, Greek and Cyrillic letters; kana voicing marks
# (U+3099, U+309A) and Hangul jamo are kept, so Japanese and Korean names keep their meaning.
_ACCENT_RANGES = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
_NAME_SEPARATORS = re.compile(r"[\^=\s]+")


def _is_accent(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _ACCENT_RANGES)


def normalize_name(value: str) -> str:
    """A person name (or name query) for comparison: accents stripped, upper case, `^`, `=` and
    runs of white space turned into single spaces, no leading or trailing space.

    "Müller^Hans^^Dr" -> "MULLER HANS DR". Wildcards `*` and `?` are left as they are.
    """
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = unicodedata.normalize("NFC", "".join(c for c in decomposed if not _is_accent(c)))
    return _NAME_SEPARATORS.sub(" ", stripped.upper()).strip()


def name_words(value: str) -> list[str]:
    """The words of a person name after `normalize_name` (all component groups together)."""
    return normalize_name(value).split()


def name_groups(value: str) -> list[str]:
    """The non-empty component groups of one PN value (alphabetic, ideographic, phonetic), each
    normalized: "Yamada^Tarou=山田^太郎" -> ["YAMADA TAROU", "山田 太郎"]. Single value and wild
    card matching of a PN compare a query against each group."""
    groups = (normalize_name(group) for group in value.split("="))
    return [group for group in groups if group]


_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})|([0-9]{4})\.([0-9]{2})\.([0-9]{2})")
_TIME = re.compile(r"([0-9]{2})(?::?([0-9]{2})(?::?([0-9]{2})(?:\.([0-9]{1,6}))?)?)?")
_STRICT_TIME = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?")


def is_valid_date(value: str) -> bool:
    """True for a DA value YYYYMMDD that is a real calendar date."""
    return len(value) == 8 and value.isascii() and date_key(value) is not None


def is_valid_time(value: str) -> bool:
    """True for a TM value HH, HHMM, HHMMSS or HHMMSS.F to HHMMSS.FFFFFF within range."""
    return _STRICT_TIME.fullmatch(value) is not None and time_key(value) is not None


def date_key(value: str) -> str | None:
    """A stored or queried DA value as YYYYMMDD (also from the old YYYY.MM.DD form); None if it is
    not a real calendar date. Keys compare in date order as strings."""
    match = _DATE.fullmatch(value.strip())
    if match is None:
        return None
    parts = [part for part in match.groups() if part is not None]
    try:
        date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return None
    return "".join(parts)


def time_key(value: str, *, upper: bool = False) -> str | None:
    """A TM value as HHMMSS.FFFFFF (also from the old HH:MM:SS form); None if invalid.

    Missing trailing parts are filled with their smallest value, or with their largest when
    `upper` is set, so "12" covers 12:00:00.000000 to 12:59:59.999999. Keys compare in time order
    as strings.
    """
    match = _TIME.fullmatch(value.strip())
    if match is None:
        return None
    hours, minutes, seconds, fraction = match.groups()
    fill = "9" if upper else "0"
    minutes = minutes or ("59" if upper else "00")
    seconds = seconds or ("59" if upper else "00")
    fraction = (fraction or "").ljust(6, fill)
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 60:
        return None
    return f"{hours}{minutes}{seconds}.{fraction}"

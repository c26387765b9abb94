"""The QIDO-RS query model: a search request's query string parsed into a frozen `Query`.

Parsing follows PS3.18 section 8.3.4 (query parameters) with the matching of PS3.4 C.2.2.2; the
index adapters translate a `Query` into their own language, and `matches` is the reference
matcher they are checked against (the contract suite compares adapter results with it).

Matching, per condition kind:
- EMPTY: universal matching (an empty value, or only `*`): every entity matches; the attribute is
  only to be returned.
- SINGLE: PN compares `normalize_name(value)` with each of `name_groups(stored)`; DA compares
  `date_key`s; IS compares integers; other VRs compare the stored value without surrounding
  spaces, case-sensitively.
- WILDCARD: `*` (any run, also empty) and `?` (one character) over the whole value; PN as SINGLE,
  other VRs case-sensitive.
- RANGE (DA, TM; a single TM value becomes a range over its precision): `low <= key <= high` with
  `date_key`/`time_key` of the stored value; `low`/`high` are already keys, None is open.
- UID_LIST: the stored value (without surrounding spaces) equals one of `values` (UIDs, and also
  code strings: `ModalitiesInStudy=CT,MR` or `CT\\MR`).
- FUZZY (PN with fuzzymatching=true): every word of `name_words(value)` is a prefix of some word
  of `name_words(stored)`.
A multi-valued stored attribute (a list, or a string with backslashes) matches if any value does;
a missing or empty stored value matches only EMPTY. All conditions of a query must match.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from shared.core.attributes import (
    DEFAULT_RETURN,
    MATCHABLE,
    Attribute,
    Level,
    date_key,
    is_private_tag,
    is_valid_date,
    is_valid_time,
    lookup_keyword,
    name_groups,
    name_words,
    normalize_name,
    time_key,
    vr_of,
)
from shared.core.errors import BadRequest
from shared.core.uids import is_valid_uid, require_uid

__all__ = ["Condition", "Level", "MatchKind", "Query", "matches", "parse_query"]

MAX_LIST_VALUES = 500
MAX_OFFSET = 2**31 - 1


class MatchKind(StrEnum):
    SINGLE = "single"
    WILDCARD = "wildcard"
    RANGE = "range"
    UID_LIST = "uid_list"
    FUZZY = "fuzzy"
    EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class Condition:
    """One matching key. The VR is `MATCHABLE[keyword].vr`."""

    keyword: str  # DICOM keyword, e.g. "PatientName"
    level: Level  # the level the attribute belongs to
    kind: MatchKind
    value: str = ""  # SINGLE / WILDCARD / FUZZY: the decoded value, wildcards left in
    values: tuple[str, ...] = ()  # UID_LIST
    low: str | None = None  # RANGE, inclusive (a date_key / time_key); None = open
    high: str | None = None


@dataclass(frozen=True, slots=True)
class Query:
    level: Level
    study_uid: str | None  # from the URL path
    series_uid: str | None
    conditions: tuple[Condition, ...]  # all must match; EMPTY ones only ask for the attribute
    include_all: bool
    include_fields: tuple[str, ...]  # keywords
    limit: int
    offset: int
    fuzzy: bool
    ignored: tuple[str, ...]  # attributes given as keys that are not matched (name them in a Warning)
    unsupported: tuple[str, ...] = ()  # control parameters asked for but not supported

    def warnings(self) -> tuple[str, ...]:
        """Client-safe texts for `Warning: 299 <service>: <text>` headers (PS3.18 8.3.4)."""
        texts = [
            f"The {name} parameter is not supported. {_UNSUPPORTED[name]} has not been performed."
            for name in self.unsupported
        ]
        if self.ignored:
            names = ", ".join(self.ignored)
            texts.append(f"The following attributes are not supported for matching and were ignored: {names}")
        return tuple(texts)

    def return_keywords(self) -> tuple[str, ...]:
        """The attributes each result carries: the level's defaults (plus the higher levels' for
        /series and /instances searches not scoped by the path), the matched and the included
        ones. With `include_all`, return also everything else known at the level."""
        keywords = list(DEFAULT_RETURN[self.level])
        if self.level is Level.SERIES and self.study_uid is None:
            keywords += DEFAULT_RETURN[Level.STUDY]
        if self.level is Level.INSTANCE and self.series_uid is None:
            keywords += DEFAULT_RETURN[Level.SERIES]
            if self.study_uid is None:
                keywords += DEFAULT_RETURN[Level.STUDY]
        keywords += [condition.keyword for condition in self.conditions]
        keywords += self.include_fields
        return tuple(dict.fromkeys(keywords))


_UNSUPPORTED = {
    "emptyvaluematching": "Empty Value Matching",
    "multiplevaluematching": "Multiple Value Matching",
}
_BOOLEAN_CONTROLS = ("fuzzymatching", *_UNSUPPORTED)
# Parameters of PS3.18 8.3.3 that the HTTP layer (content negotiation) deals with.
_HTTP_LAYER = ("accept", "charset")


def parse_query(
    level: Level | str,
    params: Sequence[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    default_limit: int = 100,
    max_limit: int = 1000,
) -> Query:
    """Parse the (already percent-decoded) query parameters of a QIDO-RS search.

    Raises BadRequest with a client-safe message (naming the parameter, never its value) for an
    invalid parameter. `study_uid`/`series_uid` come from the path and are checked as UIDs.
    """
    level = Level(level)
    if level is Level.STUDY and (study_uid or series_uid):
        raise ValueError("a study search has no UIDs in its path")
    if series_uid is not None and (level is not Level.INSTANCE or study_uid is None):
        raise ValueError("a series UID in the path needs a study UID and an instance search")
    if study_uid is not None:
        require_uid(study_uid, "Study Instance UID in the path")
    if series_uid is not None:
        require_uid(series_uid, "Series Instance UID in the path")

    controls: dict[str, str] = {}
    include_all = False
    include_fields: list[str] = []
    keys: list[tuple[str, str]] = []
    for name, value in params:
        lower = name.lower()
        if lower == "includefield":
            all_requested, fields = _parse_includefield(value)
            include_all = include_all or all_requested
            include_fields += fields
        elif lower in ("limit", "offset", *_BOOLEAN_CONTROLS):
            if lower in controls:
                raise BadRequest(f"The {lower} parameter is given more than once")
            controls[lower] = value
        elif lower not in _HTTP_LAYER:
            keys.append((name, value))

    fuzzy = _parse_boolean(controls, "fuzzymatching")
    unsupported = tuple(name for name in _UNSUPPORTED if _parse_boolean(controls, name))
    conditions, ignored, returned = _parse_keys(level, keys, fuzzy)
    return Query(
        level=level,
        study_uid=study_uid,
        series_uid=series_uid,
        conditions=tuple(conditions),
        include_all=include_all,
        include_fields=tuple(dict.fromkeys(include_fields + returned)),
        limit=_parse_limit(controls.get("limit"), default_limit, max_limit),
        offset=_parse_offset(controls.get("offset")),
        fuzzy=fuzzy,
        ignored=tuple(dict.fromkeys(ignored)),
        unsupported=unsupported,
    )


# -- control parameters --------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")


def _parse_boolean(controls: dict[str, str], name: str) -> bool:
    value = controls.get(name)
    if value is None:
        return False
    if value.strip().lower() not in ("true", "false"):
        raise BadRequest(f"The {name} parameter must be true or false")
    return value.strip().lower() == "true"


def _parse_limit(value: str | None, default: int, maximum: int) -> int:
    if value is None:
        return min(default, maximum)
    text = value.strip()
    digits = text.lstrip("0")
    if _DIGITS.fullmatch(text) is None or not digits:
        raise BadRequest("The limit parameter must be a positive integer")
    # PS3.18 8.3.4.4: the server may return fewer results than asked for.
    return maximum if len(digits) > 18 else min(int(digits), maximum)


def _parse_offset(value: str | None) -> int:
    if value is None:
        return 0
    text = value.strip()
    if _DIGITS.fullmatch(text) is None:
        raise BadRequest("The offset parameter must be a non-negative integer")
    if len(text.lstrip("0")) > 18 or int(text) > MAX_OFFSET:
        raise BadRequest(f"The offset parameter must not exceed {MAX_OFFSET}")
    return int(text)


def _parse_includefield(value: str) -> tuple[bool, list[str]]:
    """`all` or a comma-separated list of attributes (keywords, tags or sequence paths, whose
    top-level sequence is included); empty list elements are skipped (RFC 9110 list syntax)."""
    include_all = False
    fields: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if item.lower() == "all":
            include_all = True
            continue
        fields.append(_resolve_path(item, in_includefield=True)[0])
    return include_all, fields


def _display(name: str) -> str:
    """A parameter name as it may appear in an error message: printable ASCII, at most 64."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in name[:64])
    return shown + ("..." if len(name) > 64 else "")


_COMMA_TAG = re.compile(r"\(?[0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)?")


def _resolve_path(name: str, *, in_includefield: bool) -> list[str]:
    """The keywords of an attribute or a sequence path ("00400275.00401001"), or BadRequest."""
    where = "includefield: " if in_includefield else ""
    keywords: list[str] = []
    parts = name.split(".")
    for index, part in enumerate(parts):
        keyword = lookup_keyword(part)
        if keyword is None:
            if is_private_tag(part):
                raise BadRequest(f"{where}private attributes are not supported: {_display(name)}")
            hint = " (write tags as 8 hex digits, e.g. 00100010)" if _COMMA_TAG.fullmatch(name) else ""
            what = "attribute" if in_includefield else "query parameter or attribute"
            raise BadRequest(f"{where}unknown {what}: {_display(name)}{hint}")
        if index < len(parts) - 1 and vr_of(keyword) != "SQ":
            raise BadRequest(f"{where}not a sequence path: {_display(name)}")
        keywords.append(keyword)
    return keywords


# -- matching keys -------------------------------------------------------------------------------


def _parse_keys(
    level: Level, keys: list[tuple[str, str]], fuzzy: bool
) -> tuple[list[Condition], list[str], list[str]]:
    """Conditions, ignored attributes, and attributes to return (empty values of non-matchable
    attributes, which are a request to return them)."""
    conditions: list[Condition] = []
    ignored: list[str] = []
    returned: list[str] = []
    seen: set[str] = set()
    for name, raw in keys:
        path = _resolve_path(name, in_includefield=False)
        dotted = ".".join(path)
        if dotted in seen:
            raise BadRequest(f"The attribute {dotted} is given more than once")
        seen.add(dotted)
        value = raw.strip()
        attribute = MATCHABLE.get(dotted)
        if attribute is None:
            if value:
                ignored.append(dotted)
            else:
                returned.append(path[0])
        elif attribute.level.depth > level.depth:
            if value:
                ignored.append(dotted)
        else:
            conditions += _conditions(attribute, value, fuzzy)
    return conditions, ignored, returned


_WILDCARDS = frozenset("*?")


def _conditions(attribute: Attribute, value: str, fuzzy: bool) -> list[Condition]:
    keyword, vr = attribute.keyword, attribute.vr
    if not value or set(value) == {"*"}:
        return [Condition(keyword, attribute.level, MatchKind.EMPTY)]
    has_wildcard = not _WILDCARDS.isdisjoint(value)
    if vr in ("UI", "DA", "TM", "IS") and has_wildcard:
        raise BadRequest(f"{keyword}: wild cards are not allowed for this attribute")
    if vr == "UI" or (vr == "CS" and ("," in value or "\\" in value)):
        return [_list_condition(attribute, value)]
    if "\\" in value:
        raise BadRequest(f"{keyword}: multiple values are not supported for this attribute")
    if vr in ("DA", "TM"):
        return [_range_condition(attribute, value)]
    if vr == "IS":
        if re.fullmatch(r"[+-]?[0-9]{1,12}", value) is None:
            raise BadRequest(f"{keyword}: expected an integer")
        return [Condition(keyword, attribute.level, MatchKind.SINGLE, value=str(int(value)))]
    if vr == "PN":
        return _name_conditions(attribute, value, fuzzy and not has_wildcard)
    kind = MatchKind.WILDCARD if has_wildcard else MatchKind.SINGLE
    return [Condition(keyword, attribute.level, kind, value=value)]


def _list_condition(attribute: Attribute, value: str) -> Condition:
    keyword = attribute.keyword
    items = [item.strip() for item in re.split(r"[\\,]", value)]
    if any(not item for item in items):
        raise BadRequest(f"{keyword}: empty value in a list")
    if len(items) > MAX_LIST_VALUES:
        raise BadRequest(f"{keyword}: more than {MAX_LIST_VALUES} values in a list")
    if attribute.vr == "UI" and not all(is_valid_uid(item) for item in items):
        raise BadRequest(f"{keyword}: not a valid DICOM UID")
    if attribute.vr == "CS" and not _WILDCARDS.isdisjoint(value):
        raise BadRequest(f"{keyword}: wild cards cannot be combined with a list of values")
    unique = tuple(dict.fromkeys(items))
    if len(unique) == 1:
        return Condition(keyword, attribute.level, MatchKind.SINGLE, value=unique[0])
    return Condition(keyword, attribute.level, MatchKind.UID_LIST, values=unique)


def _range_condition(attribute: Attribute, value: str) -> Condition:
    keyword, is_date = attribute.keyword, attribute.vr == "DA"
    expected = "YYYYMMDD" if is_date else "HHMMSS"
    valid = is_valid_date if is_date else is_valid_time
    if "-" not in value:
        if not valid(value):
            raise BadRequest(f"{keyword}: invalid value (expected {expected})")
        if is_date:
            return Condition(keyword, attribute.level, MatchKind.SINGLE, value=value)
        # A time is matched over its precision: StudyTime=1230 matches 12:30:00 to 12:30:59.999999.
        return Condition(
            keyword, attribute.level, MatchKind.RANGE, low=time_key(value), high=time_key(value, upper=True)
        )
    low, _, high = (part.strip() for part in value.partition("-"))
    if "-" in high or not (low or high) or (low and not valid(low)) or (high and not valid(high)):
        raise BadRequest(
            f"{keyword}: invalid range (expected {expected}-{expected}, either side may be open)"
        )
    low_key = (date_key(low) if is_date else time_key(low)) if low else None
    high_key = (date_key(high) if is_date else time_key(high, upper=True)) if high else None
    if low_key is not None and high_key is not None and low_key > high_key:
        raise BadRequest(f"{keyword}: the start of the range is after its end")
    return Condition(keyword, attribute.level, MatchKind.RANGE, low=low_key, high=high_key)


def _name_conditions(attribute: Attribute, value: str, fuzzy: bool) -> list[Condition]:
    """PN: one FUZZY condition, or one SINGLE / WILDCARD condition per non-empty component group
    of the query ("Yamada^Tarou=山田^*" needs both groups to be found in the stored name)."""
    keyword, level = attribute.keyword, attribute.level
    if fuzzy:
        if not name_words(value):
            return [Condition(keyword, level, MatchKind.EMPTY)]
        return [Condition(keyword, level, MatchKind.FUZZY, value=value)]
    conditions = []
    for group in (part.strip() for part in value.split("=")):
        if not normalize_name(group) or set(group) <= {"*", "^", " "}:
            continue
        kind = MatchKind.SINGLE if _WILDCARDS.isdisjoint(group) else MatchKind.WILDCARD
        conditions.append(Condition(keyword, level, kind, value=group))
    return conditions or [Condition(keyword, level, MatchKind.EMPTY)]


# -- the reference matcher -----------------------------------------------------------------------


@lru_cache(maxsize=256)
def _wildcard_pattern(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def _stored_values(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split("\\") if isinstance(value, str) else list(value)
    return [item for item in items if item.strip(" \0")]


def matches(condition: Condition, value: str | Sequence[str] | None) -> bool:
    """True if a stored attribute value matches the condition (DICOM semantics, see the module
    docstring). PN values are in the PS3.5 string form "Alphabetic=Ideographic=Phonetic"."""
    if condition.kind is MatchKind.EMPTY:
        return True
    vr = MATCHABLE[condition.keyword].vr
    return any(_matches_one(condition, vr, item) for item in _stored_values(value))


def _matches_one(condition: Condition, vr: str, stored: str) -> bool:
    kind, query = condition.kind, condition.value
    if kind is MatchKind.FUZZY:
        words = name_words(stored)
        return all(any(word.startswith(q) for word in words) for q in name_words(query))
    if kind is MatchKind.RANGE:
        key = date_key(stored) if vr == "DA" else time_key(stored)
        return (
            key is not None
            and (condition.low is None or condition.low <= key)
            and (condition.high is None or key <= condition.high)
        )
    if kind is MatchKind.UID_LIST:
        return stored.strip(" \0") in condition.values
    if vr == "PN":
        normalized = normalize_name(query)
        groups = name_groups(stored)
        if kind is MatchKind.WILDCARD:
            return any(_wildcard_pattern(normalized).fullmatch(group) for group in groups)
        return normalized in groups
    if kind is MatchKind.WILDCARD:
        return _wildcard_pattern(query).fullmatch(stored.strip(" ")) is not None
    if vr == "DA":
        return date_key(stored) == query
    if vr == "IS":
        text = stored.strip(" ")
        return re.fullmatch(r"[+-]?[0-9]{1,12}", text) is not None and int(text) == int(query)
    return stored.strip(" \0") == query

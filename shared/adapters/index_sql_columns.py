"""How the SQL index turns an instance's DICOM JSON attributes into columns and name-word rows."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from shared.core.attributes import date_key, name_groups, name_words, time_key
from shared.core.dicomjson import first_value


def _str(attrs: dict[str, Any], tag: str, width: int) -> str | None:
    value = first_value(attrs, tag)
    if value is None:
        return None
    text = str(value).strip()
    return text[:width] if text else None


def person_name(attrs: dict[str, Any], tag: str, width: int) -> str | None:
    """A PN in its PS3.5 form "Alphabetic=Ideographic=Phonetic" (trailing empty groups dropped), so
    that ideographic and phonetic queries find it too."""
    values = (attrs.get(tag) or {}).get("Value") or []
    value = values[0] if values else None
    if not isinstance(value, dict):
        return _str(attrs, tag, width)
    groups = [str(value.get(g) or "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
    text = "=".join(groups).rstrip("=").strip()
    return text[:width] if text else None


def _date(attrs: dict[str, Any], tag: str) -> str | None:
    value = _str(attrs, tag, 16)
    return date_key(value) if value else None


def _time(attrs: dict[str, Any], tag: str) -> str | None:
    value = _str(attrs, tag, 32)
    return time_key(value) if value else None


@lru_cache(maxsize=1024)
def _name_groups(name: str) -> tuple[str, ...]:
    """name_groups, remembered: every instance of a study brings the same names again."""
    return tuple(name_groups(name))


def _norm(name: str | None) -> str | None:
    """The first (alphabetic) component group, normalized: what name queries in Latin script match."""
    groups = _name_groups(name) if name else ()
    return groups[0][:324] if groups else None


def _groups(name: str | None) -> str | None:
    """Every component group, normalized, as `=G1=G2=`: what ideographic and phonetic queries match."""
    groups = _name_groups(name) if name else ()
    return f"={'='.join(groups)}="[:340] if groups else None


def integer(attrs: dict[str, Any], tag: str) -> int | None:
    value = first_value(attrs, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def study_columns(attrs: dict[str, Any]) -> dict[str, Any]:
    patient = person_name(attrs, "00100010", 324)
    referring = person_name(attrs, "00080090", 324)
    return {
        "patient_name": patient,
        "patient_name_norm": _norm(patient),
        "patient_name_groups": _groups(patient),
        "patient_id": _str(attrs, "00100020", 64),
        "patient_birth_date": _date(attrs, "00100030"),
        "patient_sex": _str(attrs, "00100040", 16),
        "study_date": _date(attrs, "00080020"),
        "study_time": _time(attrs, "00080030"),
        "accession_number": _str(attrs, "00080050", 16),
        "referring_physician_name": referring,
        "referring_physician_norm": _norm(referring),
        "referring_physician_groups": _groups(referring),
        "study_id": _str(attrs, "00200010", 16),
        "study_description": _str(attrs, "00081030", 64),
        "attrs": attrs,
    }


def series_columns(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "modality": _str(attrs, "00080060", 16),
        "series_number": integer(attrs, "00200011"),
        "series_description": _str(attrs, "0008103E", 64),
        "pps_start_date": _date(attrs, "00400244"),
        "pps_start_time": _time(attrs, "00400245"),
        "attrs": attrs,
    }


def name_word_rows(study_pk: int, patient: str | None, referring: str | None) -> list[dict[str, Any]]:
    """The name_words rows of a study: a function of its two name columns alone."""
    return [
        {"study_pk": study_pk, "kind": kind, "word": word[:64]}
        for kind, name in (("P", patient), ("R", referring))
        for word in dict.fromkeys(name_words(name or ""))
    ]

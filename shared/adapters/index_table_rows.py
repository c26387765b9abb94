"""Rows of the Table index: the keys of each table and what each row holds.

`<prefix>Studies`: one partition per study, `<partition>|<study>`:
    "S"                    the study: attrs, counts, modality counts, index bookkeeping
    "R|<series>"           a series: attrs, instance count, modalities
    "I|<series>|<sop>"     an instance: status, version(s), file facts, attrs once committed
`<prefix>Uids`: one partition per UID, `<partition>|<uid>`:
    "I"                    the claim of a SOP Instance UID by its study and series
    "R|<study>"            a series UID -> the study that holds it
`<prefix>Keys`: one partition per key kind, `<partition>|<kind>`, rows `<value>|...|<study>`
    that point at a study partition and carry the study's match values (a covering index).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.adapters.index_table_store import SEP, Entity, dump_json, key, load_json
from shared.core.attributes import MATCHABLE, Level, date_key, name_groups, name_words
from shared.core.model import DicomJson, InstanceUids, StoredInstance

STUDY_RK = "S"
CLAIM_RK = "I"
PENDING, COMMITTED = 0, 1
NO_DATE = "99999999"  # studies without a date sort after every dated study
_INVERT = 10**20 - 1

# key kinds of the Keys table
ORDER, CREATED, PID, ACC, MOD = "order", "created", "pid", "acc", "mod"
NAME_KINDS = {"PatientName": ("pn", "pw"), "ReferringPhysicianName": ("rn", "rw")}
VALUE_KINDS = {"PatientID": PID, "AccessionNumber": ACC}


def study_pk(partition: str, study: str) -> str:
    return f"{partition}{SEP}{key(study)}"


def series_rk(series: str) -> str:
    return f"R{SEP}{key(series)}"


def instance_rk(series: str, sop: str) -> str:
    return f"I{SEP}{key(series)}{SEP}{key(sop)}"


def uid_pk(partition: str, uid: str) -> str:
    return f"{partition}{SEP}{key(uid)}"


def series_lookup_rk(study: str) -> str:
    return f"R{SEP}{key(study)}"


def keys_pk(partition: str, kind: str) -> str:
    return f"{partition}{SEP}{kind}"


def value_rk(value: str, study: str) -> str:
    return f"{key(value)}{SEP}{key(study)}"


# --- match values ---------------------------------------------------------------------------------


def json_values(attrs: DicomJson, keyword: str) -> list[str]:
    """A matchable attribute's values as the reference matcher takes them (PN in its PS3.5 string
    form "Alphabetic=Ideographic=Phonetic", trailing empty groups dropped)."""
    elem = attrs.get(MATCHABLE[keyword].tag) or {}
    out = []
    for value in elem.get("Value") or []:
        if isinstance(value, dict):
            groups = [str(value.get(g) or "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
            out.append("=".join(groups).rstrip("="))
        elif value is not None:
            out.append(str(value))
    return out


def level_values(attrs: DicomJson, level: Level) -> dict[str, list[str]]:
    """The match values of every matchable attribute of `level` that `attrs` has."""
    out = {}
    for keyword, attribute in MATCHABLE.items():
        if attribute.level is level and keyword != "ModalitiesInStudy":
            values = json_values(attrs, keyword)
            if values:
                out[keyword] = values
    return out


def modalities(counts: dict[str, int]) -> list[str]:
    return sorted(m for m, n in counts.items() if n > 0)


def study_values(attrs: DicomJson, modality_counts: dict[str, int]) -> dict[str, list[str]]:
    values = level_values(attrs, Level.STUDY)
    mods = modalities(modality_counts)
    if mods:
        values["ModalitiesInStudy"] = mods
    return values


# --- order keys -----------------------------------------------------------------------------------


def study_date(attrs: DicomJson) -> str:
    for value in json_values(attrs, "StudyDate"):
        found = date_key(value)
        if found:
            return found
    return NO_DATE


def order_key(study: str, date: str, created: str) -> str:
    """Newest study date first, studies without a date last, then the newest study first."""
    inverted_date = NO_DATE if date == NO_DATE else f"{99999999 - int(date):08d}"
    return f"{inverted_date}{SEP}{_INVERT - int(created):020d}{SEP}{key(study)}"


def number(value: Any) -> int | None:
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def first_number(attrs: DicomJson, keyword: str) -> int | None:
    values = json_values(attrs, keyword)
    return number(values[0]) if values else None


def sort_number(value: Any) -> tuple[bool, int]:
    """Missing numbers first (as SQL sorts NULL ascending), then by value."""
    found = number(value)
    return (found is not None, found or 0)


# --- the covering key rows of a study ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRows:
    rows: dict[tuple[str, str], Entity]

    @property
    def digest(self) -> str:
        text = json.dumps(sorted(self.rows.items()), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def key_rows(
    partition: str, study: str, created: str, attrs: DicomJson, modality_counts: dict[str, int]
) -> KeyRows:
    """Every Keys row of a study in its current state (all carry its match values and order)."""
    values = study_values(attrs, modality_counts)
    order = order_key(study, study_date(attrs), created)
    base: Entity = {"st": study, "c": created, "o": order}
    dump_json(base, "m", values)
    rows: dict[tuple[str, str], Entity] = {}

    def add(kind: str, rk: str) -> None:
        pk = keys_pk(partition, kind)
        rows[(pk, rk)] = {"PartitionKey": pk, "RowKey": rk, **base}

    add(ORDER, order)
    add(CREATED, f"{created}{SEP}{key(study)}")
    for keyword, kind in VALUE_KINDS.items():
        for value in values.get(keyword, []):
            if value.strip(" \0"):
                add(kind, value_rk(value.strip(" \0"), study))
    for keyword, (groups_kind, words_kind) in NAME_KINDS.items():
        for value in values.get(keyword, []):
            for group in name_groups(value):
                add(groups_kind, value_rk(group, study))
            for word in name_words(value):
                add(words_kind, value_rk(word, study))
    for modality in values.get("ModalitiesInStudy", []):
        add(MOD, f"{key(modality)}{SEP}{order}")
    return KeyRows(rows)


def row_keys(rows: Iterable[tuple[str, str]]) -> list[list[str]]:
    return [[pk, rk] for pk, rk in rows]


# --- instance rows ---------------------------------------------------------------------------------


def stored_instance(study: str, row: Entity) -> StoredInstance:
    return StoredInstance(
        uids=InstanceUids(study, row["se"], row["sop"]),
        sop_class_uid=row["cls"],
        transfer_syntax=row["ts"],
        version=row["v"],
        size=int(row["size"]),
        number_of_frames=int(row["nf"]),
    )


def instance_sort(series_order: dict[str, tuple[Any, ...]], row: Entity) -> tuple[Any, ...]:
    """Instances by their series' order, then InstanceNumber (missing first), then age."""
    return (series_order.get(row["se"], ()), sort_number(row.get("num")), row.get("c", ""), row["sop"])


def series_sort(row: Entity) -> tuple[Any, ...]:
    """Series by SeriesNumber (missing first), then age."""
    return (sort_number(row.get("num")), row.get("c", ""), row["se"])


def attrs_of(row: Entity) -> DicomJson:
    found = load_json(row, "a", {})
    assert isinstance(found, dict)
    return found

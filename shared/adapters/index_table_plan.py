"""How a QIDO query reaches its candidate studies on the Table index (the "query plan").

Of the study-level conditions that a Keys partition can serve, the most selective one drives the
search (UIDs, then exact values, then prefixes, then dates, then modalities); every condition is
then checked in process with the reference matcher `matches` over the candidate's match values,
so what the service returns is only ever a superset that gets filtered, never the answer itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.adapters.index_table_rows import ACC, MOD, NAME_KINDS, NO_DATE, ORDER, PID
from shared.adapters.index_table_store import END, SEP, is_cut, key
from shared.core.attributes import MATCHABLE, Level, name_words, normalize_name
from shared.core.query import Condition, MatchKind, Query

_WILDCARDS = ("*", "?")


@dataclass(frozen=True, slots=True)
class Plan:
    """Where candidate studies come from.

    kind "uids": point reads of `uids`; "keys": the RowKey ranges of Keys partition `partition`
    (any order); "order": one range of the order partition (study-list order); "mods": the
    modality rows of `values`, merged in study-list order; "all": the whole order partition.
    """

    kind: str
    partition: str = ""
    ranges: tuple[tuple[str, str], ...] = ()
    uids: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    cost: int = 9

    @property
    def ordered(self) -> bool:
        return self.kind in ("order", "mods", "all")


ALL = Plan("all")


def study_conditions(query: Query) -> list[Condition]:
    return [
        c
        for c in query.conditions
        if MATCHABLE[c.keyword].level is Level.STUDY and c.kind is not MatchKind.EMPTY
    ]


def conditions_at(query: Query, level: Level) -> list[Condition]:
    return [
        c for c in query.conditions if MATCHABLE[c.keyword].level is level and c.kind is not MatchKind.EMPTY
    ]


def exact_range(value: str) -> tuple[str, str]:
    """The RowKeys `<value>|<study>` of one value (a prefix range if the key had to be cut)."""
    start = key(value) if is_cut(value) else key(value) + SEP
    return (start, start + END)


def prefix_range(prefix: str) -> tuple[str, str]:
    start = key(prefix)
    return (start, start + END)


def literal_prefix(pattern: str) -> str:
    cut = min((pattern.index(w) for w in _WILDCARDS if w in pattern), default=len(pattern))
    return pattern[:cut]


def _date_range(low: str | None, high: str | None) -> tuple[str, str]:
    """Order-partition RowKeys start with the inverted date: newest first, undated last."""
    lo = f"{99999999 - int(high):08d}" if high else "00000000"
    hi = f"{99999999 - int(low):08d}{END}" if low else NO_DATE
    return (lo, hi)


def _plan_for(cond: Condition) -> Plan | None:
    keyword, kind = cond.keyword, cond.kind
    if keyword == "StudyInstanceUID":
        if kind is MatchKind.SINGLE:
            return Plan("uids", uids=(cond.value,), cost=0)
        if kind is MatchKind.UID_LIST:
            return Plan("uids", uids=cond.values, cost=0)
        return None
    if keyword in ("PatientID", "AccessionNumber"):
        partition = PID if keyword == "PatientID" else ACC
        if kind is MatchKind.SINGLE and cond.value.strip(" \0"):
            return Plan("keys", partition, (exact_range(cond.value.strip(" \0")),), cost=1)
        if kind is MatchKind.WILDCARD and literal_prefix(cond.value):
            return Plan("keys", partition, (prefix_range(literal_prefix(cond.value)),), cost=3)
        if kind is MatchKind.UID_LIST:
            return Plan("keys", partition, tuple(exact_range(v) for v in cond.values), cost=2)
        return None
    if keyword in NAME_KINDS:
        groups, words = NAME_KINDS[keyword]
        normalized = normalize_name(cond.value)
        if kind is MatchKind.SINGLE and normalized:
            return Plan("keys", groups, (exact_range(normalized),), cost=2)
        if kind is MatchKind.WILDCARD and literal_prefix(normalized).strip():
            return Plan("keys", groups, (prefix_range(literal_prefix(normalized)),), cost=3)
        if kind is MatchKind.FUZZY and name_words(cond.value):
            longest = max(name_words(cond.value), key=len)
            return Plan("keys", words, (prefix_range(longest),), cost=3)
        return None
    if keyword == "StudyDate":
        if kind is MatchKind.SINGLE:
            return Plan("order", ORDER, (_date_range(cond.value, cond.value),), cost=4)
        if kind is MatchKind.RANGE:
            return Plan("order", ORDER, (_date_range(cond.low, cond.high),), cost=5)
        return None
    if keyword == "ModalitiesInStudy":
        return modality_plan(cond)
    return None


def modality_plan(cond: Condition) -> Plan | None:
    """Studies with one of the modalities (ModalitiesInStudy, or Modality of their series)."""
    if cond.kind is MatchKind.SINGLE:
        return Plan("mods", MOD, values=(cond.value,), cost=6)
    if cond.kind is MatchKind.UID_LIST:
        return Plan("mods", MOD, values=cond.values, cost=6)
    if cond.kind is MatchKind.WILDCARD and literal_prefix(cond.value):
        return Plan("keys", MOD, (prefix_range(literal_prefix(cond.value)),), cost=7)
    return None


def plan(query: Query) -> Plan:
    """The cheapest way to the candidate studies of the query's study-level conditions; below the
    study level, a Modality condition can narrow the studies too."""
    options = [p for p in map(_plan_for, study_conditions(query)) if p is not None]
    if query.level is not Level.STUDY:
        options += [
            p for c in query.conditions if c.keyword == "Modality" and (p := modality_plan(c)) is not None
        ]
    return min(options, key=lambda p: p.cost, default=ALL)

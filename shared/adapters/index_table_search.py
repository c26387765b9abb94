"""QIDO-RS on the Table index: candidate studies from a plan, conditions checked in process.

Study searches page over the study-list order (newest StudyDate first, undated last, then newest
study first); series and instance searches group by study in the order the studies were created,
then SeriesNumber / InstanceNumber (missing first) and age, as the SQL index orders them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from shared.adapters.index_table_plan import Plan, conditions_at, plan, study_conditions
from shared.adapters.index_table_rows import (
    COMMITTED,
    CREATED,
    ORDER,
    STUDY_RK,
    attrs_of,
    instance_sort,
    keys_pk,
    level_values,
    order_key,
    series_lookup_rk,
    series_sort,
    study_date,
    study_pk,
    study_values,
    uid_pk,
)
from shared.adapters.index_table_store import END, SEP, Entity, Tables, key, load_json
from shared.adapters.index_table_write import Scope
from shared.core.attributes import Level
from shared.core.model import SearchHit
from shared.core.query import Condition, MatchKind, Query, matches

STUDIES, UIDS, KEYS = Tables.STUDIES, Tables.UIDS, Tables.KEYS
FETCH_AHEAD = 16  # study partitions read in parallel while paging series / instances
_SLIM = ["st", "o", "c"]


@dataclass(frozen=True, slots=True)
class Candidate:
    study: str
    created: str
    order: str


def _ok(conditions: list[Condition], values: dict[str, list[str]]) -> bool:
    return all(matches(c, values.get(c.keyword) or None) for c in conditions)


def _count(value: int) -> dict[str, Any]:
    return {"vr": "IS", "Value": [value]}


# --- candidate studies ----------------------------------------------------------------------------


def _key_rows(s: Scope, p: Plan, slim: bool) -> Iterator[Entity]:
    """The Keys rows of a plan; for ordered plans, in study-list order and each study once."""
    select = _SLIM if slim else None
    pk = keys_pk(s.partition, p.partition)
    if p.kind == "all":
        yield from s.tables.query(KEYS, keys_pk(s.partition, ORDER), select=select)
    elif p.kind == "mods":
        streams = [s.tables.prefix(KEYS, pk, f"{key(m)}{SEP}", select=select) for m in p.values]
        last = None
        for row in heapq.merge(*streams, key=lambda r: str(r["o"])):
            if row["o"] != last:
                yield row
            last = row["o"]
    else:
        for lo, hi in p.ranges:
            yield from s.tables.query(KEYS, pk, lo, hi, select=select)


def _study_rows(s: Scope, studies: list[str]) -> list[Entity | None]:
    return s.tables.map(lambda uid: s.tables.get(STUDIES, study_pk(s.partition, uid), STUDY_RK), studies)


def candidates(s: Scope, p: Plan, conditions: list[Condition]) -> Iterator[Candidate]:
    """The studies that meet the study-level conditions: in study-list order if `p.ordered`."""
    if p.kind == "uids":
        rows = _study_rows(s, list(dict.fromkeys(p.uids)))
        found = []
        for row in rows:
            if row is None:
                continue
            attrs = attrs_of(row)
            if _ok(conditions, study_values(attrs, load_json(row, "mc", {}))):
                found.append(
                    Candidate(row["st"], row["c"], order_key(row["st"], study_date(attrs), row["c"]))
                )
        yield from found
        return
    seen: set[str] = set()
    for row in _key_rows(s, p, slim=not conditions):
        if row["st"] in seen:
            continue
        seen.add(row["st"])
        if not conditions or _ok(conditions, load_json(row, "m", {})):
            yield Candidate(row["st"], row["c"], row["o"])


# --- studies --------------------------------------------------------------------------------------


def _study_hit(row: Entity) -> SearchHit:
    attrs = attrs_of(row)
    attrs["00201206"] = _count(int(row["ns"]))
    attrs["00201208"] = _count(int(row["ni"]))
    mods = sorted(m for m, n in load_json(row, "mc", {}).items() if n > 0)
    if mods:
        attrs["00080061"] = {"vr": "CS", "Value": mods}
    return SearchHit(row["st"], None, None, attrs)


def search_studies(s: Scope, query: Query) -> list[SearchHit]:
    p = plan(query)
    conditions = study_conditions(query)
    if p.kind == "uids":  # the study rows are the candidates: read each once
        matched: list[tuple[str, Entity]] = []
        for row in _study_rows(s, list(dict.fromkeys(p.uids))):
            attrs = attrs_of(row) if row is not None else {}
            if row is not None and _ok(conditions, study_values(attrs, load_json(row, "mc", {}))):
                matched.append((order_key(row["st"], study_date(attrs), row["c"]), row))
        matched.sort(key=lambda pair: pair[0])
        return [_study_hit(row) for _, row in matched[query.offset : query.offset + query.limit]]
    found = candidates(s, p, conditions)
    if p.ordered:
        page = list(islice(found, query.offset, query.offset + query.limit))
    else:
        page = sorted(found, key=lambda c: c.order)[query.offset : query.offset + query.limit]
    rows = _study_rows(s, [c.study for c in page])
    return [_study_hit(row) for row in rows if row is not None]


# --- series and instances -------------------------------------------------------------------------


def _scoped(
    s: Scope, query: Query
) -> tuple[list[Candidate] | Iterator[Candidate], dict[str, set[str]] | None]:
    """The candidate studies of a series / instance search in creation order, and the series each
    may hold (None: any), from the path, a UID lookup, or the plan."""
    uid_conds = {c.keyword: c for c in query.conditions if c.kind in (MatchKind.SINGLE, MatchKind.UID_LIST)}
    series_of: dict[str, set[str]] | None = None
    studies: list[str] | None = None
    if query.study_uid:
        studies = [query.study_uid]
        if query.series_uid:
            series_of = {query.study_uid: {query.series_uid}}
    elif "SOPInstanceUID" in uid_conds and query.level is Level.INSTANCE:
        cond = uid_conds["SOPInstanceUID"]
        claims = s.tables.map(
            lambda uid: s.tables.get(UIDS, uid_pk(s.partition, uid), "I"), list(cond.values or (cond.value,))
        )
        series_of = {}
        for claim in claims:
            if claim is not None:
                series_of.setdefault(claim["st"], set()).add(claim["se"])
        studies = list(series_of)
    elif "SeriesInstanceUID" in uid_conds:
        cond = uid_conds["SeriesInstanceUID"]
        series_of = {}
        for uid in cond.values or (cond.value,):
            for row in s.tables.prefix(UIDS, uid_pk(s.partition, uid), series_lookup_rk("")):
                series_of.setdefault(row["st"], set()).add(uid)
        studies = list(series_of)
    if studies is not None:
        rows = _study_rows(s, studies)
        found = [Candidate(r["st"], r["c"], "") for r in rows if r is not None]
        return sorted(found, key=lambda c: (c.created, c.study)), series_of
    p = plan(query)
    conditions = study_conditions(query)
    if p.kind == "all":
        created = Plan("keys", CREATED, ((f"{''}", END),))
        return candidates(s, created, conditions), None
    return sorted(candidates(s, p, conditions), key=lambda c: (c.created, c.study)), None


def _hits_of_study(
    s: Scope, query: Query, study: str, only_series: set[str] | None
) -> list[tuple[tuple[Any, ...], SearchHit]]:
    """The series or instance hits of one study partition, with their sort keys."""
    pk = study_pk(s.partition, study)
    rows = list(s.tables.query(STUDIES, pk, "R|", STUDY_RK + END))
    study_row = next((r for r in rows if r["RowKey"] == STUDY_RK), None)
    if study_row is None:
        return []
    study_attrs = attrs_of(study_row)
    if not _ok(study_conditions(query), study_values(study_attrs, load_json(study_row, "mc", {}))):
        return []
    series_conds = conditions_at(query, Level.SERIES)
    series: dict[str, tuple[Entity, dict[str, Any]]] = {}
    for row in rows:
        if row["RowKey"] == STUDY_RK or (only_series is not None and row["se"] not in only_series):
            continue
        attrs = attrs_of(row)
        if _ok(series_conds, level_values(attrs, Level.SERIES)):
            series[row["se"]] = (row, attrs)
    order = {uid: (study_row["c"], *series_sort(row)) for uid, (row, _) in series.items()}
    if query.level is Level.SERIES:
        return [
            (
                order[uid],
                SearchHit(study, uid, None, {**study_attrs, **attrs, "00201209": _count(int(row["ni"]))}),
            )
            for uid, (row, attrs) in series.items()
        ]
    instance_conds = conditions_at(query, Level.INSTANCE)
    hits = []
    targets = [None] if only_series is None or len(series) != 1 else list(series)
    for target in targets:
        for row in _instances_with_attrs(s, pk, target):
            if row["s"] != COMMITTED or row["se"] not in series:
                continue
            attrs = attrs_of(row)
            if _ok(instance_conds, level_values(attrs, Level.INSTANCE)):
                hit = SearchHit(
                    study, row["se"], row["sop"], {**study_attrs, **series[row["se"]][1], **attrs}
                )
                hits.append((instance_sort(order, row), hit))
    return hits


def _instances_with_attrs(s: Scope, pk: str, series: str | None) -> Iterable[Entity]:
    start = "I|" if series is None else f"I{SEP}{key(series)}{SEP}"
    return s.tables.prefix(STUDIES, pk, start)


def search_below_study(s: Scope, query: Query) -> list[SearchHit]:
    found, series_of = _scoped(s, query)
    wanted = query.offset + query.limit
    hits: list[SearchHit] = []
    stream = iter(found)
    while len(hits) < wanted:
        chunk = list(islice(stream, FETCH_AHEAD))
        if not chunk:
            break
        per_study = s.tables.map(
            lambda c: _hits_of_study(s, query, c.study, series_of.get(c.study) if series_of else None), chunk
        )
        for study_hits in per_study:
            hits += [hit for _, hit in sorted(study_hits, key=lambda pair: pair[0])]
    return hits[query.offset : wanted]


def search(s: Scope, query: Query) -> list[SearchHit]:
    if query.level is Level.STUDY:
        return search_studies(s, query)
    return search_below_study(s, query)

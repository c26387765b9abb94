"""QIDO-RS on the SQL index: a core `Query` becomes one paged SELECT plus per-page aggregates."""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Select, and_, exists, func, select, true

from shared.adapters.index_sql_schema import CREATED, instances, series, studies
from shared.adapters.index_sql_schema import name_words as name_words_table
from shared.core.attributes import Level, name_words, normalize_name
from shared.core.errors import BadRequest
from shared.core.model import SearchHit
from shared.core.query import Condition, MatchKind, Query

# keyword -> (column, kind) where kind is "str", "pn", "int", "date" or "time"
_STUDY: dict[str, tuple[Column[Any], str]] = {
    "StudyInstanceUID": (studies.c.study_uid, "str"),
    "StudyDate": (studies.c.study_date, "date"),
    "StudyTime": (studies.c.study_time, "time"),
    "AccessionNumber": (studies.c.accession_number, "str"),
    "ReferringPhysicianName": (studies.c.referring_physician_norm, "pn"),
    "PatientName": (studies.c.patient_name_norm, "pn"),
    "PatientID": (studies.c.patient_id, "str"),
    "PatientBirthDate": (studies.c.patient_birth_date, "date"),
    "PatientSex": (studies.c.patient_sex, "str"),
    "StudyID": (studies.c.study_id, "str"),
    "StudyDescription": (studies.c.study_description, "str"),
}
_GROUPS = {
    "PatientName": studies.c.patient_name_groups,
    "ReferringPhysicianName": studies.c.referring_physician_groups,
}
_WORD_KIND = {"PatientName": "P", "ReferringPhysicianName": "R"}
_SERIES: dict[str, tuple[Column[Any], str]] = {
    "SeriesInstanceUID": (series.c.series_uid, "str"),
    "Modality": (series.c.modality, "str"),
    "SeriesNumber": (series.c.series_number, "int"),
    "SeriesDescription": (series.c.series_description, "str"),
    "PerformedProcedureStepStartDate": (series.c.pps_start_date, "date"),
    "PerformedProcedureStepStartTime": (series.c.pps_start_time, "time"),
}
_INSTANCE: dict[str, tuple[Column[Any], str]] = {
    "SOPInstanceUID": (instances.c.sop_instance_uid, "str"),
    "SOPClassUID": (instances.c.sop_class_uid, "str"),
    "InstanceNumber": (instances.c.instance_number, "int"),
}
_ALL = {**_STUDY, **_SERIES, **_INSTANCE}


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _as_int(value: str, keyword: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{keyword} must be an integer") from None


def _latin(text: str) -> bool:
    """Only Latin letters (Ø, Ł, ß too, which keep no accent to strip), digits and punctuation."""
    return all(c.isascii() or not c.isalpha() or unicodedata.name(c, "").startswith("LATIN") for c in text)


def _name(keyword: str, column: Column[Any], value: str, wildcard: bool) -> ColumnElement[bool]:
    """A Latin-script name query matches the indexed alphabetic group (an index serves it); any
    other script is matched against every component group."""
    normalized = normalize_name(value)
    if _latin(normalized):
        return column.like(_like_pattern(normalized), escape="\\") if wildcard else column == normalized
    return _GROUPS[keyword].like(f"%={_like_pattern(normalized)}=%", escape="\\")


def _single(column: Column[Any], kind: str, keyword: str, value: str) -> ColumnElement[bool]:
    if kind == "pn":
        return _name(keyword, column, value, wildcard=False)
    if kind == "int":
        return column == _as_int(value, keyword)
    return column == value


def condition_clause(cond: Condition) -> ColumnElement[bool]:
    if cond.keyword == "ModalitiesInStudy":
        if cond.kind is MatchKind.EMPTY:
            return true()
        other = series.alias("modalities")
        if cond.kind is MatchKind.WILDCARD:
            match: ColumnElement[bool] = other.c.modality.like(_like_pattern(cond.value), escape="\\")
        else:
            match = other.c.modality.in_(cond.values or (cond.value,))
        return exists().where(other.c.study_pk == studies.c.id, match)
    column, kind = _ALL[cond.keyword]
    if cond.kind is MatchKind.EMPTY:
        return true()
    if cond.kind is MatchKind.SINGLE:
        return _single(column, kind, cond.keyword, cond.value)
    if cond.kind is MatchKind.UID_LIST:
        return column.in_(cond.values)
    if cond.kind is MatchKind.WILDCARD:
        if kind == "pn":
            return _name(cond.keyword, column, cond.value, wildcard=True)
        return column.like(_like_pattern(cond.value), escape="\\")
    if cond.kind is MatchKind.FUZZY:
        word_kind = _WORD_KIND.get(cond.keyword)
        if word_kind is None:
            return _single(column, kind, cond.keyword, cond.value)
        words = name_words(cond.value)
        if not words:
            return true()
        return and_(
            *(
                studies.c.id.in_(
                    select(name_words_table.c.study_pk).where(
                        name_words_table.c.kind == word_kind,
                        name_words_table.c.word.like(_like_pattern(w) + "%", escape="\\"),
                    )
                )
                for w in words
            )
        )
    if cond.kind is MatchKind.RANGE:
        parts = []
        if cond.low:
            parts.append(column >= cond.low)
        if cond.high:
            parts.append(column <= cond.high)
        return and_(*parts) if parts else true()
    raise BadRequest(f"unsupported matching on {cond.keyword}")


def _page(stmt: Select[Any], query: Query) -> Select[Any]:
    return stmt.limit(query.limit).offset(query.offset)


def _study_stmt(partition: str, query: Query) -> Select[Any]:
    stmt = select(studies).where(studies.c.partition == partition)
    if query.study_uid:
        stmt = stmt.where(studies.c.study_uid == query.study_uid)
    for cond in query.conditions:
        stmt = stmt.where(condition_clause(cond))
    return _page(stmt.order_by(studies.c.study_date.desc().nulls_last(), studies.c.id.desc()), query)


def _series_stmt(partition: str, query: Query) -> Select[Any]:
    stmt = select(series, studies.c.study_uid, studies.c.attrs.label("study_attrs")).join(
        studies, series.c.study_pk == studies.c.id
    )
    stmt = stmt.where(studies.c.partition == partition)
    if query.study_uid:
        stmt = stmt.where(studies.c.study_uid == query.study_uid)
    for cond in query.conditions:
        stmt = stmt.where(condition_clause(cond))
    return _page(stmt.order_by(series.c.study_pk, series.c.series_number, series.c.id), query)


def _instance_stmt(partition: str, query: Query) -> Select[Any]:
    stmt = (
        select(
            instances,
            series.c.attrs.label("series_attrs"),
            studies.c.attrs.label("study_attrs"),
        )
        .join(series, instances.c.series_pk == series.c.id)
        .join(studies, instances.c.study_pk == studies.c.id)
        .where(instances.c.partition == partition, instances.c.status == CREATED)
    )
    if query.study_uid:
        stmt = stmt.where(instances.c.study_uid == query.study_uid)
    if query.series_uid:
        stmt = stmt.where(instances.c.series_uid == query.series_uid)
    for cond in query.conditions:
        stmt = stmt.where(condition_clause(cond))
    return _page(stmt.order_by(instances.c.series_pk, instances.c.instance_number, instances.c.id), query)


def _count(value: int) -> dict[str, Any]:
    return {"vr": "IS", "Value": [value]}


def search(conn: Connection, partition: str, query: Query) -> list[SearchHit]:
    if query.level is Level.STUDY:
        rows = list(conn.execute(_study_stmt(partition, query)))
        pks = [r.id for r in rows]
        counts: dict[int, tuple[int, int]] = {}
        modalities: dict[int, set[str]] = defaultdict(set)
        if pks:
            # One statement for both: a row per series of the page's studies with its stored
            # instances (series without any still give their modality, as the series table does).
            for pk, modality, n_instances in conn.execute(
                select(series.c.study_pk, series.c.modality, func.count(instances.c.id))
                .select_from(series)
                .outerjoin(
                    instances, and_(instances.c.series_pk == series.c.id, instances.c.status == CREATED)
                )
                .where(series.c.study_pk.in_(pks))
                .group_by(series.c.id, series.c.study_pk, series.c.modality)
            ):
                if n_instances:
                    n_series, total = counts.get(pk, (0, 0))
                    counts[pk] = (n_series + 1, total + n_instances)
                if modality is not None:
                    modalities[pk].add(modality)
        hits = []
        for r in rows:
            attrs = dict(r.attrs)
            n_series, n_instances = counts.get(r.id, (0, 0))
            attrs["00201206"] = _count(n_series)
            attrs["00201208"] = _count(n_instances)
            if modalities.get(r.id):
                attrs["00080061"] = {"vr": "CS", "Value": sorted(modalities[r.id])}
            hits.append(SearchHit(r.study_uid, None, None, attrs))
        return hits
    if query.level is Level.SERIES:
        rows = list(conn.execute(_series_stmt(partition, query)))
        pks = [r.id for r in rows]
        per_series: dict[int, int] = {}
        if pks:
            per_series = dict(
                conn.execute(  # type: ignore[arg-type]
                    select(instances.c.series_pk, func.count())
                    .where(instances.c.series_pk.in_(pks), instances.c.status == CREATED)
                    .group_by(instances.c.series_pk)
                ).all()
            )
        return [
            SearchHit(
                r.study_uid,
                r.series_uid,
                None,
                {**r.study_attrs, **r.attrs, "00201209": _count(per_series.get(r.id, 0))},
            )
            for r in rows
        ]
    rows = list(conn.execute(_instance_stmt(partition, query)))
    return [
        SearchHit(
            r.study_uid,
            r.series_uid,
            r.sop_instance_uid,
            {**r.study_attrs, **r.series_attrs, **(r.attrs or {})},
        )
        for r in rows
    ]

"""Instance records for the MetadataIndex contract, built the way the store pipeline builds them:
a pydicom dataset -> DICOM JSON (`dataset_to_json`) -> `split_levels`."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

from pydicom.dataset import Dataset

from shared.core.attributes import MATCHABLE, Level
from shared.core.dicomjson import dataset_to_json
from shared.core.levels import split_levels
from shared.core.model import DicomJson, InstanceRecord, InstanceUids, StoredInstance
from shared.core.query import Query, parse_query

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_serial = itertools.count(1)


def uid(*parts: int) -> str:
    """A valid UID under a test root; with no parts, a fresh one."""
    return ".".join(["1.2.826.0.1.3680043.10.999", *(str(p) for p in (parts or (next(_serial),)))])


def new_version() -> str:
    return f"v{next(_serial):015d}"


def make_record(
    uids: InstanceUids,
    *,
    version: str | None = None,
    sop_class: str = CT_IMAGE,
    size: int = 1000,
    frames: int = 1,
    **keywords: Any,
) -> InstanceRecord:
    """A record whose attributes are the given DICOM keywords (None leaves one out)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.SOPInstanceUID = uids.instance
    ds.SOPClassUID = sop_class
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some test values are deliberately old-style (1999.03.04)
        for keyword, value in keywords.items():
            if value is not None:
                setattr(ds, keyword, value)
        doc = dataset_to_json(ds, 1024)
    study, series, instance = split_levels(doc)
    return InstanceRecord(
        uids=uids,
        sop_class_uid=sop_class,
        transfer_syntax=EXPLICIT_LE,
        version=version or new_version(),
        size=size,
        number_of_frames=frames,
        study_attrs=study,
        series_attrs=series,
        instance_attrs=instance,
    )


def stored(record: InstanceRecord) -> StoredInstance:
    """What find_instances returns for a committed record."""
    return StoredInstance(
        uids=record.uids,
        sop_class_uid=record.sop_class_uid,
        transfer_syntax=record.transfer_syntax,
        version=record.version,
        size=record.size,
        number_of_frames=record.number_of_frames,
    )


def query(
    level: Level | str,
    query_string: str = "",
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> Query:
    """A parsed QIDO query from a query string that is already percent-decoded: split on `&` and on
    the first `=` only (PN values carry `=` between component groups, and `%` is literal)."""
    params = [tuple(part.split("=", 1)) for part in query_string.split("&") if part]
    pairs = [(p[0], p[1] if len(p) > 1 else "") for p in params]
    pairs += [("limit", str(limit)), ("offset", str(offset))]
    return parse_query(level, pairs, study_uid=study_uid, series_uid=series_uid, max_limit=max(limit, 1000))


def json_values(attrs: DicomJson, keyword: str) -> list[str]:
    """The values of a matchable attribute as the reference matcher takes them: plain strings, a PN
    as its PS3.5 form "Alphabetic=Ideographic=Phonetic" (trailing empty groups dropped)."""
    elem = attrs.get(MATCHABLE[keyword].tag) or {}
    out = []
    for value in elem.get("Value", []):
        if isinstance(value, dict):
            groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
            out.append("=".join(groups).rstrip("="))
        else:
            out.append(str(value))
    return out

"""Which attributes belong to the study, the series and the instance (the index keeps each once).

Study level: the Patient module (group 0010) and the General / Patient Study modules. Series level:
the General Series, General Equipment and Frame of Reference attributes. The index keeps a small,
fixed set of instance attributes; any other attribute a QIDO-RS client asks for is read from the
stored metadata.
"""

from __future__ import annotations

import json

from shared.core.dicomjson import tag_key
from shared.core.model import DicomJson

SPECIFIC_CHARACTER_SET = "00080005"

STUDY_TAGS = frozenset(
    tag_key(t)
    for t in (
        0x0020000D,
        0x00080020,
        0x00080030,
        0x00080050,
        0x00080051,
        0x00080090,
        0x00080096,
        0x00200010,
        0x00081030,
        0x00081032,
        0x00081048,
        0x00081049,
        0x00081060,
        0x00081062,
        0x00081080,
        0x00321032,
        0x00321033,
        0x00321060,
        0x00321064,
        0x00400260,
    )
)

SERIES_TAGS = frozenset(
    tag_key(t)
    for t in (
        0x0020000E,
        0x00080060,
        0x00200011,
        0x0008103E,
        0x00080021,
        0x00080031,
        0x00400244,
        0x00400245,
        0x00400253,
        0x00400254,
        0x00180015,
        0x00185100,
        0x00200060,
        0x00080070,
        0x00081090,
        0x00081010,
        0x00080080,
        0x00081040,
        0x00181000,
        0x00181020,
        0x00200052,
        0x00201040,
        0x00081050,
        0x00081052,
        0x00081070,
        0x00081072,
        0x00181030,
        0x00400275,
        0x00081111,
        0x00080064,
        0x00102210,
    )
)

INSTANCE_TAGS = frozenset(
    tag_key(t)
    for t in (
        0x00080016,
        0x00080018,
        0x00200013,
        0x00280010,
        0x00280011,
        0x00280100,
        0x00280101,
        0x00280008,
        0x00080201,
        0x00080008,
        0x00080022,
        0x00080032,
        0x00080023,
        0x00080033,
        0x00200012,
        0x00200032,
        0x00200037,
        0x00201041,
        0x00180050,
        0x00280004,
        0x00280002,
        0x00281050,
        0x00281051,
        0x00080012,
        0x00080013,
        0x00280030,
        0x00200020,
    )
)

# An attribute bigger than this (as JSON) is not copied into the index; it stays in the metadata blob.
_MAX_INDEXED_JSON = 4096


def split_levels(attrs: DicomJson) -> tuple[DicomJson, DicomJson, DicomJson]:
    """Split an instance's DICOM JSON into its study, series and (indexed) instance attributes."""
    study: DicomJson = {}
    series: DicomJson = {}
    instance: DicomJson = {}
    charset = attrs.get(SPECIFIC_CHARACTER_SET)
    for tag, elem in attrs.items():
        if "BulkDataURI" in elem:
            continue
        if tag in STUDY_TAGS or tag[:4] == "0010":
            target = study
        elif tag in SERIES_TAGS:
            target = series
        elif tag in INSTANCE_TAGS:
            target = instance
        else:
            continue
        if elem.get("vr") == "SQ" and len(json.dumps(elem)) > _MAX_INDEXED_JSON:
            continue
        target[tag] = elem
    if charset is not None:
        for level in (study, series, instance):
            level[SPECIFIC_CHARACTER_SET] = charset
    return study, series, instance

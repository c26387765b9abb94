"""The STOW-RS response (PS3.18 10.5.3): status code, store response dataset, warning texts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.core.model import DicomJson, FailureReason, StoreOutcome, StoreStatus

RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


@dataclass(frozen=True, slots=True)
class StoreResponse:
    status: int
    body: DicomJson
    warnings: tuple[str, ...]  # client-safe texts for `Warning` headers, one per failed or warned part


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def build_store_response(base: str, outcomes: Sequence[StoreOutcome], study: str | None) -> StoreResponse:
    referenced: list[DicomJson] = []
    failed: list[DicomJson] = []
    texts: list[str] = []
    for number, outcome in enumerate(outcomes, start=1):
        if outcome.status is StoreStatus.FAILED:
            item = {
                REFERENCED_SOP_CLASS_UID: _uid(outcome.sop_class_uid),
                REFERENCED_SOP_INSTANCE_UID: _uid(outcome.sop_instance_uid),
                FAILURE_REASON: {"vr": "US", "Value": [int(outcome.reason or 0x0110)]},
            }
            failed.append(item)
            texts.append(f"part {number}: {outcome.message}")
            continue
        assert outcome.study_uid and outcome.series_uid and outcome.sop_instance_uid
        item = {
            REFERENCED_SOP_CLASS_UID: _uid(outcome.sop_class_uid),
            REFERENCED_SOP_INSTANCE_UID: _uid(outcome.sop_instance_uid),
            RETRIEVE_URL: {
                "vr": "UR",
                "Value": [
                    instance_url(base, outcome.study_uid, outcome.series_uid, outcome.sop_instance_uid)
                ],
            },
        }
        if outcome.status is StoreStatus.WARNING:
            item[WARNING_REASON] = {"vr": "US", "Value": [int(outcome.reason or 0xB000)]}
            texts.append(f"part {number}: {outcome.message}")
        referenced.append(item)
    body: DicomJson = {}
    if study is not None:
        body[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if referenced:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    warned = any(o.status is StoreStatus.WARNING for o in outcomes)
    if not referenced and failed and all(o.reason is FailureReason.OUT_OF_RESOURCES for o in outcomes):
        status = 413  # refused by a configured limit only
    elif not referenced:
        status = 409
    elif failed or warned:
        status = 202
    else:
        status = 200
    return StoreResponse(status, body, tuple(texts))

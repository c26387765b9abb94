"""The PS3.18 store response: status codes, sequences, RetrieveURLs and reasons."""

from __future__ import annotations

import pytest

from shared.core.model import FailureReason, StoreOutcome, StoreStatus
from shared.core.stow_response import (
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    REFERENCED_SOP_SEQUENCE,
    RETRIEVE_URL,
    WARNING_REASON,
    build_store_response,
)

BASE = "http://host/dicomweb"
OK = StoreOutcome(StoreStatus.STORED, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2", "1.2.3")
WARN = StoreOutcome(
    StoreStatus.WARNING,
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.3.5",
    "1.2",
    "1.2.3",
    FailureReason.COERCION_OF_DATA_ELEMENTS,
    "w",
)
BAD = StoreOutcome(
    StoreStatus.FAILED, None, None, reason=FailureReason.CANNOT_UNDERSTAND, message="not DICOM"
)
DUP = StoreOutcome(
    StoreStatus.FAILED,
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.3.4",
    reason=FailureReason.DUPLICATE_SOP_INSTANCE,
    message="exists",
)


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ([OK], 200),
        ([OK, OK], 200),
        ([OK, BAD], 202),
        ([WARN], 202),
        ([BAD], 409),
        ([BAD, DUP], 409),
    ],
    ids=["one-stored", "all-stored", "some-failed", "warning", "none-stored", "all-failed"],
)
def test_status_follows_outcomes(outcomes: list[StoreOutcome], status: int) -> None:
    assert build_store_response(BASE, outcomes, None).status == status


def test_referenced_items_carry_absolute_retrieve_urls() -> None:
    body = build_store_response(BASE, [OK], None).body
    (item,) = body[REFERENCED_SOP_SEQUENCE]["Value"]
    assert item[RETRIEVE_URL]["Value"] == [f"{BASE}/studies/1.2/series/1.2.3/instances/1.2.3.4"]
    assert item["00081155"]["Value"] == ["1.2.3.4"]
    assert item["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert RETRIEVE_URL not in body  # no study URL when stored under /studies


def test_study_retrieve_url_when_stored_under_a_study() -> None:
    body = build_store_response(BASE, [OK], "1.2").body
    assert body[RETRIEVE_URL]["Value"] == [f"{BASE}/studies/1.2"]


def test_failures_carry_reason_codes_and_client_safe_texts() -> None:
    response = build_store_response(BASE, [OK, BAD, DUP], None)
    failed = response.body[FAILED_SOP_SEQUENCE]["Value"]
    assert [f[FAILURE_REASON]["Value"][0] for f in failed] == [0xC000, 0x0111]
    assert failed[0]["00081155"] == {"vr": "UI"}  # unknown UID: present, empty
    assert response.warnings == ("part 2: not DICOM", "part 3: exists")


def test_warning_reason_on_stored_with_warnings() -> None:
    body = build_store_response(BASE, [WARN], None).body
    (item,) = body[REFERENCED_SOP_SEQUENCE]["Value"]
    assert item[WARNING_REASON]["Value"] == [0xB000]


def test_a_request_refused_only_by_limits_is_413() -> None:
    limited = StoreOutcome(StoreStatus.FAILED, reason=FailureReason.OUT_OF_RESOURCES, message="too big")
    assert build_store_response(BASE, [limited], None).status == 413
    assert build_store_response(BASE, [limited, BAD], None).status == 409
    assert build_store_response(BASE, [OK, limited], None).status == 202

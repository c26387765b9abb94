"""The harness's own logic: request bodies, streamed part counting, statistics, ratios, data."""

from __future__ import annotations

import io

import pydicom
import pytest

from bench import synth
from bench.load import (
    DelimiterCounter,
    Outcome,
    boundary_of,
    latency_summary,
    percentile,
    query_string,
    stow_body,
    throughput_summary,
)
from bench.report import metric_rows, ratio, table
from bench.scenarios import Metric


def _parse_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    parts = body.split(b"--" + boundary)
    assert parts[-1] == b"--\r\n"
    return [p.split(b"\r\n\r\n", 1)[1][: -len(b"\r\n")] for p in parts[1:-1]]


def test_stow_body_carries_each_instance_as_an_application_dicom_part() -> None:
    body, ctype = stow_body([b"first", b"second\r\n--x"])
    boundary = boundary_of(ctype)
    assert ctype.startswith('multipart/related; type="application/dicom"; boundary=')
    assert boundary is not None
    assert _parse_multipart(body, boundary) == [b"first", b"second\r\n--x"]
    assert body.count(b"Content-Type: application/dicom\r\n") == 2


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', b"abc"),
        ('multipart/related; boundary="q u"; type=application/octet-stream', b"q u"),
        ("multipart/related; BOUNDARY=Up", b"Up"),
        ("application/dicom", None),
    ],
    ids=["plain", "quoted-first", "case-insensitive-name", "absent"],
)
def test_boundary_of(content_type: str, expected: bytes | None) -> None:
    assert boundary_of(content_type) == expected


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 40, 10_000], ids=lambda n: f"chunk{n}")
def test_delimiter_counter_counts_parts_whatever_the_chunking(chunk_size: int) -> None:
    body, ctype = stow_body([b"a" * 50, b"b" * 3, b""])
    boundary = boundary_of(ctype)
    assert boundary is not None
    counter = DelimiterCounter(boundary)
    for i in range(0, len(body), chunk_size):
        counter.feed(body[i : i + chunk_size])
    assert counter.parts == 3


def test_query_string_keeps_wildcards_and_commas_as_a_browser_sends_them() -> None:
    qs = query_string([("PatientName", "DOE*"), ("includefield", "00081030,00080060"), ("x", "a b&c")])
    assert qs == "PatientName=DOE*&includefield=00081030,00080060&x=a%20b%26c"


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 95, 4.0),
        ([5.0], 95, 5.0),
        (list(map(float, range(1, 101))), 95, 95.0),
    ],
    ids=["median-even", "p95-small", "single", "p95-hundred"],
)
def test_percentile_is_nearest_rank(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected


def test_failed_requests_are_never_fast() -> None:
    outcomes = [Outcome(True, 0.010)] * 18 + [Outcome(False, 0.001, error="HTTP 500")] * 2
    summary = latency_summary(outcomes)
    assert summary["failures"] == 2
    assert summary["p50_ms"] == 10.0
    assert summary["p95_ms"] is None  # the 95th percentile falls on a failure
    assert summary["first_error"] == "HTTP 500"


def test_throughput_counts_only_successful_work_over_the_whole_time() -> None:
    outcomes = [Outcome(True, 1.0, 2_000_000, 4), Outcome(False, 1.0, 2_000_000, 4, "boom")]
    summary = throughput_summary(2.0, outcomes)
    assert (summary["units_per_s"], summary["mb_per_s"], summary["failures"]) == (2.0, 1.0, 1)


@pytest.mark.parametrize(
    ("better", "ours", "baseline", "expected"),
    [
        ("higher", 200.0, 100.0, 2.0),
        ("higher", 50.0, 100.0, 0.5),
        ("lower", 5.0, 10.0, 2.0),
        ("lower", 20.0, 10.0, 0.5),
        ("lower", None, 10.0, None),
        ("higher", 10.0, 0.0, None),
    ],
    ids=["throughput-better", "throughput-worse", "latency-better", "latency-worse", "missing", "zero"],
)
def test_ratio_above_one_means_ours_is_better(
    better: str, ours: float | None, baseline: float | None, expected: float | None
) -> None:
    assert ratio(better, ours, baseline) == expected


def test_metric_rows_report_values_failures_and_ratio_per_metric() -> None:
    rows = metric_rows(
        {
            "ours": {"qido.p50": Metric(4.0, "ms", "lower", 10, 1)},
            "orthanc": {"qido.p50": Metric(8.0, "ms", "lower", 10, 0), "extra": Metric(1.0, "MB", "lower")},
        },
        baseline="orthanc",
    )
    assert rows[0] == {
        "name": "qido.p50",
        "unit": "ms",
        "better": "lower",
        "values": {"ours": 4.0, "orthanc": 8.0},
        "failures": {"ours": "1/10"},
        "ratio": 2.0,
    }
    assert rows[1]["values"] == {"ours": None, "orthanc": 1.0} and rows[1]["ratio"] is None
    text = table(rows, ["ours", "orthanc"], with_ratio=True)
    assert "qido.p50" in text and "ours 1/10" in text


def test_ct_instance_is_a_valid_512x512_16bit_ct() -> None:
    study = synth.ct_study(7, "t", 0)
    data = synth.ct_instance(synth.CtPhantom(7), study, study.series_uids[0], synth.make_uid(7, "s"), 3)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.SOPClassUID, ds.Modality, ds.Rows, ds.Columns, ds.BitsAllocated) == (
        synth.CT_IMAGE_STORAGE,
        "CT",
        512,
        512,
        16,
    )
    pixels = ds.pixel_array
    assert pixels.shape == (512, 512) and 0 <= pixels.min() < pixels.max() <= 4095
    assert 512 * 1024 < len(data) < 530 * 1024


def test_qido_studies_vary_and_uids_are_valid_and_unique() -> None:
    studies = synth.qido_studies(11, 400)
    uids = [s.uid for s in studies] + [u for s in studies for u in s.series_uids]
    assert len(set(uids)) == len(uids)
    assert all(len(u) <= 64 and u.startswith("2.25.") for u in uids)
    assert len({s.modality for s in studies}) == len(synth.MODALITIES)
    assert 0 < sum(s.patient.name.startswith("DOE^") for s in studies) < len(studies) / 5
    assert len({s.patient.id for s in studies}) < len(studies)  # patients have several studies
    assert synth.qido_studies(11, 400) == studies  # same seed, same data for every server
    assert len({s.date for s in studies}) > 300

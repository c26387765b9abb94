"""Plain-HTTP DICOMweb load: STOW bodies, timed requests, concurrency and latency statistics.

Requests go over urllib3 (thread-safe pool, little client overhead on a 2-core box). Every request
yields an `Outcome`; a failed request is counted and never treated as a fast one: in latency
percentiles it sorts as infinitely slow, so a percentile that lands on a failure is reported as null.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3

DICOM_JSON = "application/dicom+json"
ACCEPT_STUDY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one request: ok or not, how long it took, the payload bytes and a unit count."""

    ok: bool
    seconds: float
    nbytes: int = 0
    units: int = 0  # instances stored / parts received / results returned
    error: str = ""


def stow_body(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """A multipart/related STOW-RS request body and its Content-Type (one application/dicom part each)."""
    boundary = uuid.uuid4().hex
    delim = b"--" + boundary.encode()
    chunks: list[bytes] = []
    for part in parts:
        chunks += [delim, b"\r\nContent-Type: application/dicom\r\n\r\n", part, b"\r\n"]
    chunks += [delim, b"--\r\n"]
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def query_string(params: Iterable[tuple[str, str]]) -> str:
    """A QIDO query string encoded as a browser does (`*`, `,` and `^` are left as typed)."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='*,-^')}" for k, v in params)


def boundary_of(content_type: str) -> bytes | None:
    """The multipart boundary parameter of a Content-Type header, if any."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"').encode()
    return None


class DelimiterCounter:
    """Counts `--boundary` delimiters in a streamed body without holding it (chunks may split one)."""

    def __init__(self, boundary: bytes) -> None:
        self._needle = b"--" + boundary
        self._tail = b""
        self.count = 0

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        self.count += data.count(self._needle)
        # keep fewer bytes than a delimiter: a kept tail can never hold an already counted one
        keep = len(self._needle) - 1
        self._tail = data[-keep:] if keep else b""

    @property
    def parts(self) -> int:
        """Body parts seen: every part has an opening delimiter; the close delimiter adds one."""
        return max(0, self.count - 1)


def _fail(start: float, error: str) -> Outcome:
    return Outcome(False, time.perf_counter() - start, error=error[:300])


class DicomwebClient:
    """A minimal DICOMweb client over one urllib3 pool; safe to share between threads."""

    def __init__(self, root: str, *, connections: int = 8, read_timeout: float = 900.0) -> None:
        self.root = root.rstrip("/")
        self._http = urllib3.PoolManager(
            num_pools=2,
            maxsize=connections,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=10.0, read=read_timeout),
        )

    def close(self) -> None:
        self._http.clear()

    def store(self, body: bytes, content_type: str, expected: int) -> Outcome:
        """STOW-RS `POST /studies`; `units` counts the instances the server says it stored."""
        start = time.perf_counter()
        try:
            resp = self._http.request(
                "POST",
                f"{self.root}/studies",
                body=body,
                headers={"Content-Type": content_type, "Accept": DICOM_JSON},
            )
        except urllib3.exceptions.HTTPError as exc:
            return _fail(start, f"STOW transport error: {exc!r}")
        elapsed = time.perf_counter() - start
        if resp.status not in (200, 202):
            return Outcome(False, elapsed, error=f"STOW HTTP {resp.status}: {resp.data[:200]!r}")
        stored = expected - _failed_sops(resp.data)
        if stored < expected:
            return Outcome(False, elapsed, len(body), stored, f"STOW {expected - stored} instance(s) failed")
        return Outcome(True, elapsed, len(body), stored)

    def search(self, path: str, params: Sequence[tuple[str, str]], expected: int | None) -> Outcome:
        """QIDO-RS GET; `units` is the number of results; a wrong count (when known) is a failure."""
        url = f"{self.root}/{path}" + (f"?{query_string(params)}" if params else "")
        start = time.perf_counter()
        try:
            resp = self._http.request("GET", url, headers={"Accept": DICOM_JSON})
        except urllib3.exceptions.HTTPError as exc:
            return _fail(start, f"QIDO transport error: {exc!r}")
        elapsed = time.perf_counter() - start
        if resp.status == 204:
            found = 0
        elif resp.status == 200:
            try:
                found = len(json.loads(resp.data or b"[]"))
            except ValueError:
                return Outcome(False, elapsed, error="QIDO answer is not JSON")
        else:
            return Outcome(False, elapsed, error=f"QIDO HTTP {resp.status}: {resp.data[:200]!r}")
        if expected is not None and found != expected:
            return Outcome(
                False, elapsed, len(resp.data), found, f"QIDO returned {found}, expected {expected}"
            )
        return Outcome(True, elapsed, len(resp.data), found)

    def retrieve_multipart(self, path: str, accept: str, expected_parts: int, min_bytes: int = 0) -> Outcome:
        """WADO-RS GET of a multipart answer, streamed and counted (never held); checks the part count."""
        start = time.perf_counter()
        try:
            resp = self._http.request(
                "GET", f"{self.root}/{path}", headers={"Accept": accept}, preload_content=False
            )
        except urllib3.exceptions.HTTPError as exc:
            return _fail(start, f"WADO transport error: {exc!r}")
        try:
            if resp.status != 200:
                return _fail(start, f"WADO HTTP {resp.status}: {resp.read()[:200]!r}")
            boundary = boundary_of(resp.headers.get("Content-Type", ""))
            if boundary is None:
                return _fail(start, f"WADO answer is not multipart: {resp.headers.get('Content-Type')!r}")
            counter = DelimiterCounter(boundary)
            nbytes = 0
            for chunk in resp.stream(CHUNK, decode_content=True):
                nbytes += len(chunk)
                counter.feed(chunk)
        except urllib3.exceptions.HTTPError as exc:
            return _fail(start, f"WADO transport error: {exc!r}")
        finally:
            resp.release_conn()
        elapsed = time.perf_counter() - start
        if counter.parts != expected_parts:
            return Outcome(
                False, elapsed, nbytes, counter.parts, f"{counter.parts} parts, expected {expected_parts}"
            )
        if nbytes < min_bytes:
            return Outcome(False, elapsed, nbytes, counter.parts, f"{nbytes} bytes, expected >= {min_bytes}")
        return Outcome(True, elapsed, nbytes, counter.parts)

    def metadata(self, path: str, expected: int) -> Outcome:
        """WADO-RS metadata (DICOM JSON); `units` is the number of instance objects returned."""
        start = time.perf_counter()
        try:
            resp = self._http.request("GET", f"{self.root}/{path}", headers={"Accept": DICOM_JSON})
        except urllib3.exceptions.HTTPError as exc:
            return _fail(start, f"metadata transport error: {exc!r}")
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            return Outcome(False, elapsed, error=f"metadata HTTP {resp.status}: {resp.data[:200]!r}")
        try:
            found = len(json.loads(resp.data))
        except ValueError:
            return Outcome(False, elapsed, error="metadata answer is not JSON")
        if found != expected:
            return Outcome(False, elapsed, len(resp.data), found, f"{found} instances, expected {expected}")
        return Outcome(True, elapsed, len(resp.data), found)


def _failed_sops(data: bytes) -> int:
    """Items in FailedSOPSequence (00081198) of a DICOM JSON store response (0 if absent/unreadable)."""
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        return 0
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    failed = doc.get("00081198", {}) if isinstance(doc, dict) else {}
    return len(failed.get("Value", [])) if isinstance(failed, dict) else 0


def run_concurrently(tasks: Sequence[Callable[[], Outcome]], clients: int) -> tuple[float, list[Outcome]]:
    """Run `tasks` on `clients` threads; return the wall time and every outcome (in task order)."""
    start = time.perf_counter()
    if clients <= 1:
        outcomes = [task() for task in tasks]
    else:
        with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="bench-client") as pool:
            outcomes = list(pool.map(lambda task: task(), tasks))
    return time.perf_counter() - start, outcomes


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (may be inf)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _finite_or_none(value: float, scale: float = 1.0, digits: int = 2) -> float | None:
    return round(value * scale, digits) if math.isfinite(value) else None


def latency_summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """p50/p95/mean in ms; failures sort as infinitely slow (a percentile on a failure is null)."""
    values = sorted(o.seconds if o.ok else math.inf for o in outcomes)
    ok = [o.seconds for o in outcomes if o.ok]
    return {
        "requests": len(outcomes),
        "failures": len(outcomes) - len(ok),
        "p50_ms": _finite_or_none(percentile(values, 50), 1000),
        "p95_ms": _finite_or_none(percentile(values, 95), 1000),
        "mean_ok_ms": round(1000 * sum(ok) / len(ok), 2) if ok else None,
        "first_error": next((o.error for o in outcomes if not o.ok), None),
    }


def throughput_summary(elapsed: float, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Units/s and MB/s counting only successful work over the whole wall time."""
    units = sum(o.units for o in outcomes if o.ok)
    nbytes = sum(o.nbytes for o in outcomes if o.ok)
    return {
        "requests": len(outcomes),
        "failures": sum(1 for o in outcomes if not o.ok),
        "seconds": round(elapsed, 3),
        "units": units,
        "megabytes": round(nbytes / 1e6, 2),
        "units_per_s": round(units / elapsed, 2) if elapsed > 0 else None,
        "mb_per_s": round(nbytes / 1e6 / elapsed, 2) if elapsed > 0 else None,
        "first_error": next((o.error for o in outcomes if not o.ok), None),
    }

"""The sans-I/O multipart/related reader and the response writer."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from shared.core.errors import BadRequest
from shared.core.media import parse_media_type
from shared.core.multipart import (
    Event,
    MultipartReader,
    MultipartWriter,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
    multipart_content_type,
    new_boundary,
    part_header,
)

DATA = Path(__file__).resolve().parents[1] / "data"
Part = tuple[tuple[tuple[str, str], ...], bytes]
CT_DICOM = (("content-type", "application/dicom"),)
HEAD = b"Content-Type: application/dicom\r\n\r\n"


def collect(events: Iterable[Event], parts: list[Part], state: dict[str, object]) -> None:
    """Fold events into parts, checking they come as PartStart PartData* PartEnd."""
    for event in events:
        if isinstance(event, PartStart):
            assert state.get("open") is None, "PartStart inside a part"
            state["open"] = (event.headers, bytearray())
        elif isinstance(event, PartData):
            assert state.get("open") is not None, "PartData outside a part"
            assert event.data, "empty PartData"
            state["open"][1].extend(event.data)  # type: ignore[index]
        else:
            assert isinstance(event, PartEnd)
            headers, content = state.pop("open")  # type: ignore[misc]
            state["open"] = None
            parts.append((headers, bytes(content)))


def read(body: bytes, boundary: bytes, chunks: Iterable[int] | None = None, **kwargs: int) -> list[Part]:
    reader = MultipartReader(boundary, **kwargs)
    parts: list[Part] = []
    state: dict[str, object] = {}
    for piece in split(body, chunks):
        collect(reader.feed(piece), parts, state)
    collect(reader.close(), parts, state)
    assert state.get("open") is None
    return parts


def split(body: bytes, sizes: Iterable[int] | None) -> Iterator[bytes]:
    if sizes is None:
        yield body
        return
    position = 0
    for size in sizes:
        if position >= len(body):
            return
        yield body[position : position + size]
        position += size
    if position < len(body):
        yield body[position:]


def random_sizes(seed: int, top: int) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(1, top)


def ones() -> Iterator[int]:
    while True:
        yield 1


# -- reference bodies -----------------------------------------------------------------------

DWC_BOUNDARY = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"

BODIES: list[tuple[str, bytes, list[Part]]] = [
    (
        'multipart/related; type="application/dicom"; boundary=abc',
        b"--abc\r\n" + HEAD + b"ONE\r\n--abc\r\n" + HEAD + b"TWO\r\n--abc--\r\n",
        [(CT_DICOM, b"ONE"), (CT_DICOM, b"TWO")],
    ),
    (
        "multipart/related; type=application/dicom; boundary=abc",
        b"--abc\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--abc--",
        [(CT_DICOM, b"ONE")],
    ),
    (
        'multipart/related; boundary="abc"',
        b"--abc\r\n\r\nno headers\r\n--abc--\r\n",
        [((), b"no headers")],
    ),
    (
        f'multipart/related; type="application/dicom"; boundary="{DWC_BOUNDARY}"',
        f"\r\n--{DWC_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + b"DICM\x00\r\n\xff"
        + f"\r\n--{DWC_BOUNDARY}--".encode(),
        [(CT_DICOM, b"DICM\x00\r\n\xff")],
    ),
    (
        "multipart/related; boundary=abc",
        b"This is the preamble.\r\nIt mentions --abcd and -abc.\r\n--abc\r\n"
        + HEAD
        + b"ONE\r\n--abc--\r\nThe epilogue\r\n--abc\r\nContent-Type: x/y\r\n\r\nignored\r\n--abc--\r\n",
        [(CT_DICOM, b"ONE")],
    ),
    (
        "multipart/related; boundary=abc",
        b"--abc\nContent-Type: application/dicom\n\nONE\n"
        b"--abc\nContent-Type: application/dicom\n\nTWO\n--abc--\n",
        [(CT_DICOM, b"ONE"), (CT_DICOM, b"TWO")],
    ),
    (
        "multipart/related; boundary=abc",
        b"--abc\r\nContent-Type: application/dicom\n\nONE\r\n--abc--\r\n",
        [(CT_DICOM, b"ONE")],
    ),
    (
        "multipart/related; boundary=abc",
        b"--abc\r\n" + HEAD + b"\r\n--abc\r\n" + HEAD + b"TWO\r\n--abc--\r\n",
        [(CT_DICOM, b""), (CT_DICOM, b"TWO")],
    ),
    (
        "multipart/related; boundary=abc",
        b"--abc\r\nContent-Type: application/dicom\r\n\r\n--abc--\r\n",
        [(CT_DICOM, b"")],
    ),
    (
        "multipart/related; boundary=boundary",
        b"--boundary\r\n\r\nabc\r\n--boundar\r\n--boundaryX\r\n--boundary-x\r\nx--boundary\r\n\r\n--boundary--",
        [((), b"abc\r\n--boundar\r\n--boundaryX\r\n--boundary-x\r\nx--boundary\r\n")],
    ),
    (
        "multipart/related; boundary=abc",
        b"--abc\r\n\r\nends with CR\r\r\n--abc--\r\n",
        [((), b"ends with CR\r")],
    ),
    (
        "multipart/related; boundary=abc",
        b"--abc \t \r\nContent-Type: application/dicom\r\n\r\nONE\r\n--abc--  \r\n",
        [(CT_DICOM, b"ONE")],
    ),
    (
        "multipart/related; boundary=abc",
        b"--abc\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Location:  http://host/studies/1  \r\nX-Empty:\r\n\r\nONE\r\n--abc--\r\n",
        [
            (
                (
                    ("content-type", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"),
                    ("content-location", "http://host/studies/1"),
                    ("x-empty", ""),
                ),
                b"ONE",
            )
        ],
    ),
    ("multipart/related; boundary=abc", b"--abc--\r\n", []),
    (
        "multipart/related; boundary=abc",
        b"--abc\r\n\r\n\r\n\r\ndata\r\n\r\n\r\n--abc--",
        [((), b"\r\n\r\ndata\r\n\r\n")],
    ),
]
BODY_IDS = [
    "quoted-type-two-parts",
    "unquoted-type",
    "missing-type-and-headers",
    "dicomweb-client-stow",
    "preamble-and-epilogue",
    "bare-lf-everywhere",
    "lf-headers-crlf-delimiters",
    "empty-part",
    "empty-part-delimiter-right-after-headers",
    "boundary-like-bytes-in-data",
    "data-ends-with-cr",
    "transport-padding",
    "folded-and-odd-headers",
    "no-parts",
    "blank-lines-in-data",
]


@pytest.mark.parametrize(("content_type", "body", "expected"), BODIES, ids=BODY_IDS)
@pytest.mark.parametrize("chunking", ["whole", "one-byte", "random-3", "random-17"])
def test_reader_yields_the_parts_for_any_chunking(
    content_type: str, body: bytes, expected: list[Part], chunking: str
) -> None:
    boundary = boundary_of(parse_media_type(content_type))
    sizes: dict[str, Iterable[int] | None] = {
        "whole": None,
        "one-byte": ones(),
        "random-3": random_sizes(3, 3),
        "random-17": random_sizes(17, 17),
    }
    assert read(body, boundary, sizes[chunking]) == expected


@pytest.mark.parametrize(("content_type", "body", "expected"), BODIES, ids=BODY_IDS)
def test_reader_handles_a_split_at_every_position(
    content_type: str, body: bytes, expected: list[Part]
) -> None:
    boundary = boundary_of(parse_media_type(content_type))
    for cut in range(len(body) + 1):
        assert read(body, boundary, [cut]) == expected, f"split at {cut}"


def test_part_start_header_lookup_is_case_insensitive() -> None:
    start = PartStart((("content-type", "application/dicom"), ("x-a", "1"), ("x-a", "2")))
    assert start.header("Content-Type") == "application/dicom"
    assert start.header("X-A") == "1"
    assert start.header("content-length") is None


# -- malformed bodies -----------------------------------------------------------------------

MALFORMED = [
    (b"--abc\r\nContent-Type: application/dicom\r\n\r\nONE and then the connection dro", "closing"),
    (b"--abc\r\nContent-Type: application/dicom\r\n\r\nONE\r\n", "closing"),
    (b"--abc\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--abc", "closing"),
    (b"--abc\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--abc-", "closing"),
    (b"--abc\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--abc\r\n", "headers"),
    (b"--abc\r\nContent-Type: appli", "headers"),
    (b"just a DICOM file, not multipart", "no boundary delimiter"),
    (b"", "no boundary delimiter"),
    (b"--abcd\r\n\r\nwrong boundary\r\n--abcd--\r\n", "no boundary delimiter"),
    (b"--abc\r\nContent-Type application/dicom\r\n\r\nONE\r\n--abc--\r\n", "malformed header"),
    (b"--abc\r\n: no name\r\n\r\nONE\r\n--abc--\r\n", "malformed header"),
    (b"--abc\r\nBad Name: x\r\n\r\nONE\r\n--abc--\r\n", "malformed header"),
    (b"--abc\r\n folded: first\r\n\r\nONE\r\n--abc--\r\n", "continuation"),
]
MALFORMED_IDS = [
    "truncated-in-data",
    "missing-final-delimiter",
    "delimiter-without-close",
    "half-close-delimiter",
    "truncated-after-delimiter",
    "truncated-in-headers",
    "not-multipart",
    "empty-body",
    "other-boundary",
    "header-without-colon",
    "header-without-name",
    "header-name-with-space",
    "continuation-first",
]


@pytest.mark.parametrize(("body", "message"), MALFORMED, ids=MALFORMED_IDS)
@pytest.mark.parametrize("chunking", ["whole", "one-byte"])
def test_reader_rejects_malformed_bodies(body: bytes, message: str, chunking: str) -> None:
    with pytest.raises(BadRequest, match=f"(?i){message}") as caught:
        read(body, b"abc", None if chunking == "whole" else ones())
    assert caught.value.status == 400


def test_header_block_over_the_limit_is_rejected() -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(20))
    body = b"--abc\r\n" + headers + b"\r\nONE\r\n--abc--\r\n"
    assert read(body, b"abc", max_header_bytes=2000)[0][1] == b"ONE"
    with pytest.raises(BadRequest, match="exceed 1000 bytes"):
        read(body, b"abc", max_header_bytes=1000)


def test_endless_header_line_fails_while_streaming_not_at_close() -> None:
    reader = MultipartReader(b"abc", max_header_bytes=1024)
    reader.feed(b"--abc\r\nX-Long: ")
    with pytest.raises(BadRequest, match="exceed"):
        for _ in range(100):
            reader.feed(b"v" * 100)


def test_endless_preamble_fails_while_streaming() -> None:
    reader = MultipartReader(b"abc")
    with pytest.raises(BadRequest, match="No multipart boundary delimiter in the first"):
        for _ in range(100):
            reader.feed(b"x" * 4096)


def test_feed_after_close_is_a_programming_error() -> None:
    reader = MultipartReader(b"abc")
    reader.feed(b"--abc--")
    assert reader.close() == []
    with pytest.raises(ValueError):
        reader.feed(b"more")


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/related; type=application/dicom",
        'multipart/related; boundary=""',
        "multipart/related; boundary=" + "a" * 71,
        'multipart/related; boundary="b\u00e9"',
    ],
    ids=["missing", "empty", "71-chars", "non-ascii"],
)
def test_boundary_of_rejects_unusable_boundaries(content_type: str) -> None:
    with pytest.raises(BadRequest, match="boundary"):
        boundary_of(parse_media_type(content_type))


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', b"abc"),
        ("multipart/related; type=application/dicom; boundary=abc", b"abc"),
        ('multipart/related; boundary="a b:c=d?"', b"a b:c=d?"),
        ("multipart/related; boundary=" + "a" * 70, b"a" * 70),
    ],
    ids=["quoted-type", "unquoted-type", "quoted-with-specials", "70-chars"],
)
def test_boundary_of_reads_the_boundary(content_type: str, boundary: bytes) -> None:
    assert boundary_of(parse_media_type(content_type)) == boundary


# -- streaming and cost ---------------------------------------------------------------------


def test_large_part_streams_with_a_bounded_hold_back() -> None:
    boundary = b"0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
    reader = MultipartReader(boundary)
    reader.feed(b"--" + boundary + b"\r\nContent-Type: application/octet-stream\r\n\r\n")
    chunk = bytes(range(256)) * 256  # 64 KiB, full of CR and LF bytes
    fed = emitted = 0
    for _ in range(64):  # 4 MiB
        events = reader.feed(chunk)
        fed += len(chunk)
        emitted += sum(len(e.data) for e in events if isinstance(e, PartData))
        assert fed - emitted <= len(boundary) + 8
    events = reader.feed(b"\r\n--" + boundary + b"--\r\n") + reader.close()
    emitted += sum(len(e.data) for e in events if isinstance(e, PartData))
    assert emitted == fed
    assert isinstance(events[-1], PartEnd)


def test_cost_is_linear_even_with_near_delimiters_and_tiny_chunks() -> None:
    near = b"\r\n--boundar" * 20000  # 220 kB of almost-delimiters
    body = b"--boundary\r\n\r\n" + near + b"\r\n--boundary--"
    started = time.perf_counter()
    parts = read(body, b"boundary", random_sizes(1, 7))
    elapsed = time.perf_counter() - started
    assert parts == [((), near)]
    assert elapsed < 5.0  # a rescanning reader needs minutes here


# -- writer ---------------------------------------------------------------------------------


def test_part_header_puts_crlf_before_every_delimiter_but_the_first() -> None:
    assert part_header("b1", "application/dicom", first=True) == (
        b"--b1\r\nContent-Type: application/dicom\r\n\r\n"
    )
    assert part_header("b1", "image/jpeg", [("Content-Location", "/x")], first=False) == (
        b"\r\n--b1\r\nContent-Type: image/jpeg\r\nContent-Location: /x\r\n\r\n"
    )


def test_writer_frames_parts_and_ends_once() -> None:
    writer = MultipartWriter("b1")
    body = writer.start_part("a/b") + b"1" + writer.start_part("a/b") + b"2" + writer.end()
    assert body == b"--b1\r\nContent-Type: a/b\r\n\r\n1\r\n--b1\r\nContent-Type: a/b\r\n\r\n2\r\n--b1--\r\n"
    with pytest.raises(ValueError):
        writer.end()
    with pytest.raises(ValueError):
        writer.start_part("a/b")


def test_writer_with_no_parts_writes_a_readable_empty_body() -> None:
    writer = MultipartWriter()
    assert read(writer.end(), writer.boundary.encode()) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [("Content-Location", "/x\r\nX-Injected: 1"), ("Bad Name", "v"), ("X", "a\nb")],
    ids=["crlf-in-value", "space-in-name", "lf-in-value"],
)
def test_writer_refuses_header_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        part_header("b1", "a/b", [(name, value)], first=True)


@pytest.mark.parametrize("boundary", ["", "a" * 71, "ends with space ", "new\nline"], ids=repr)
def test_writer_refuses_invalid_boundaries(boundary: str) -> None:
    with pytest.raises(ValueError):
        MultipartWriter(boundary)


def test_new_boundary_is_random_and_needs_no_quoting() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for boundary in boundaries:
        content_type = multipart_content_type(boundary, "application/dicom")
        assert content_type.endswith(f"; boundary={boundary}")
        assert boundary_of(parse_media_type(content_type)) == boundary.encode()


@pytest.mark.parametrize(
    ("part_type", "transfer_syntax", "expected"),
    [
        ("application/dicom", None, 'multipart/related; type="application/dicom"; boundary=b1'),
        (
            "application/octet-stream",
            "1.2.840.10008.1.2.1",
            'multipart/related; type="application/octet-stream"; '
            "transfer-syntax=1.2.840.10008.1.2.1; boundary=b1",
        ),
        ("image/jpeg", "*", 'multipart/related; type="image/jpeg"; transfer-syntax=*; boundary=b1'),
    ],
    ids=["dicom", "octet-stream-with-syntax", "any-syntax"],
)
def test_multipart_content_type_quotes_type_and_has_no_charset(
    part_type: str, transfer_syntax: str | None, expected: str
) -> None:
    assert multipart_content_type("b1", part_type, transfer_syntax) == expected
    assert "charset" not in expected


# -- round trips ----------------------------------------------------------------------------

SAMPLES = [
    DATA / "mr" / "MR_small.dcm",
    DATA / "ct" / "ct_brain_jpeg.dcm",
    DATA / "nm_sc" / "image_dfl.dcm",
    DATA / "ct" / "CT_small.dcm",
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_of_real_dicom_files(seed: int) -> None:
    files = [path.read_bytes() for path in SAMPLES]
    writer = MultipartWriter()
    body = bytearray()
    for index, content in enumerate(files):
        body += writer.start_part("application/dicom", [("Content-Location", f"/instances/{index}")])
        body += content
    body += writer.start_part("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1")
    body += writer.end()
    parts = read(bytes(body), writer.boundary.encode(), random_sizes(seed, 4096))
    assert [content for _, content in parts] == [*files, b""]
    assert [dict(headers).get("content-location") for headers, _ in parts] == [
        "/instances/0",
        "/instances/1",
        "/instances/2",
        "/instances/3",
        None,
    ]
    assert parts[-1][0] == (
        ("content-type", "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"),
    )


def test_reads_what_dicomweb_client_sends_for_store_instances() -> None:
    from dicomweb_client.api import DICOMwebClient

    files = [path.read_bytes() for path in SAMPLES]
    content_type = (
        'multipart/related; type="application/dicom"; boundary="0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"'
    )
    body = DICOMwebClient._encode_multipart_message(files, content_type)
    parts = read(body, boundary_of(parse_media_type(content_type)), random_sizes(7, 1000))
    assert [content for _, content in parts] == files
    assert all(headers == CT_DICOM for headers, _ in parts)


def test_dicomweb_client_reads_what_the_writer_sends() -> None:
    import requests
    from dicomweb_client.api import DICOMwebClient

    files = [path.read_bytes() for path in SAMPLES]
    writer = MultipartWriter()
    body = b"".join(writer.start_part("application/dicom") + content for content in files) + writer.end()
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Type"] = writer.content_type("application/dicom")
    response._content = body
    client = DICOMwebClient("http://localhost:1")
    assert list(client._decode_multipart_message(response, stream=False)) == files

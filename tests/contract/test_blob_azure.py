"""What the Azure Blob adapter does beyond the BlobStore contract (test_blob_store.py runs that on
Azurite too): construction without I/O, the container made on first use, SDK errors translated
after the SDK's retries, uploads in blocks with bounded memory, create-only races over blocks, and
a seekable streamed reader that pydicom can parse from.

Real Azurite for the storage behaviour; a tiny local HTTP server that answers like a failing
Storage service for the error statuses Azurite never returns."""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import threading
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, cast

import pydicom
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.adapters.blob_azure import BLOCK_SIZE, AzureBlobStore, StorageRetry
from shared.core.errors import BadRequest, Conflict, DicomwebError, NotFound, Unavailable
from shared.core.frames import decode_frame, index_frames
from shared.core.transcode import transcode_to_explicit_le
from tests.services import AZURITE_KEY, azurite

MB = 1024 * 1024
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
NO_WAIT = {
    "retry_policy": StorageRetry(initial_backoff=0, increment_base=0, retry_total=2, random_jitter_range=0)
}


def new_container() -> str:
    return f"t{uuid.uuid4().hex}"


def blob_bytes(size: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(size)


class Requests:
    """Counts the requests a client sends (every try, after the retry policy)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, request: Any) -> None:
        with self._lock:
            self.seen.append((request.http_request.method, request.http_request.url))

    def count(self, method: str | None = None, containing: str = "") -> int:
        return sum(1 for m, url in self.seen if (method is None or m == method) and containing in url)


@pytest.fixture
def conn() -> str:
    return azurite()


@pytest.fixture
def make_store(conn: str) -> Iterator[Callable[..., AzureBlobStore]]:
    """Stores on Azurite, each on a new container unless one is named; all removed afterwards."""
    made: list[AzureBlobStore] = []
    names: set[str] = set()

    def make(container: str | None = None, **options: Any) -> AzureBlobStore:
        name = container or new_container()
        names.add(name)
        made.append(AzureBlobStore.from_connection_string(conn, name, **options))
        return made[-1]

    yield make
    for store in made:
        store.close()
    with BlobServiceClient.from_connection_string(conn) as service:
        for name in names:
            with contextlib.suppress(ResourceNotFoundError):
                service.delete_container(name)


def container_exists(conn: str, name: str) -> bool:
    with ContainerClient.from_connection_string(conn, name) as client:
        return bool(client.exists())


# --- construction -------------------------------------------------------------------------------


def test_construction_connects_to_nothing() -> None:
    closed_port = "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};{closed_port}"
    )
    store = AzureBlobStore.from_connection_string(conn, "never-used")
    store.close()  # nothing was sent: no error, even though nothing listens on port 9


def test_use_development_storage_means_the_local_emulator() -> None:
    store = AzureBlobStore.from_connection_string("UseDevelopmentStorage=true", "dicom")
    client: ContainerClient = store._container
    assert (client.account_name, client.container_name) == ("devstoreaccount1", "dicom")
    assert client.url.startswith("http://127.0.0.1:10000/devstoreaccount1/dicom")
    store.close()


def test_an_account_url_without_credential_uses_the_default_azure_credential() -> None:
    from azure.identity import DefaultAzureCredential

    store = AzureBlobStore.from_account_url("https://example.blob.core.windows.net", "dicom")
    client: ContainerClient = store._container
    assert isinstance(client.credential, DefaultAzureCredential)
    assert client.url == "https://example.blob.core.windows.net/dicom"
    store.close()


def test_an_account_url_with_a_key_credential_stores_and_reads(conn: str) -> None:
    endpoint = next(p.split("=", 1)[1] for p in conn.split(";") if p.startswith("BlobEndpoint="))
    name = new_container()
    credential = {"account_name": "devstoreaccount1", "account_key": AZURITE_KEY}
    store = AzureBlobStore.from_account_url(endpoint, name, credential=credential)
    try:
        assert store.put("a/b.dcm", io.BytesIO(b"by account url")) == 14
        assert store.read_range("a/b.dcm", 3, 7) == b"account"
    finally:
        store.close()
        with BlobServiceClient.from_connection_string(conn) as service:
            service.delete_container(name)


# --- the container ------------------------------------------------------------------------------


def test_the_container_is_created_on_first_use(conn: str, make_store: Callable[..., AzureBlobStore]) -> None:
    name = new_container()
    store = make_store(name)
    assert not container_exists(conn, name), "construction must not create it"
    assert list(store.list()) == []
    assert container_exists(conn, name)
    store.put("k", io.BytesIO(b"v"))
    assert store.open("k").read() == b"v"


def test_many_threads_on_first_use_create_the_container_once(
    make_store: Callable[..., AzureBlobStore],
) -> None:
    requests = Requests()
    store = make_store(raw_request_hook=requests)
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda n: store.put(f"k{n}", io.BytesIO(b"x" * n)), range(8)))
    assert sizes == list(range(8))
    assert requests.count("PUT", "restype=container") == 1
    assert sorted(store.list()) == [f"k{n}" for n in range(8)]


def test_an_existing_container_is_used_as_it_is(conn: str, make_store: Callable[..., AzureBlobStore]) -> None:
    first = make_store()
    first.put("kept", io.BytesIO(b"already there"))
    name: str = first._container.container_name
    second = make_store(name)
    assert second.open("kept").read() == b"already there"
    assert second.put("new", io.BytesIO(b"n")) == 1


def test_without_create_container_a_missing_container_is_never_made(
    conn: str, make_store: Callable[..., AzureBlobStore]
) -> None:
    name = new_container()
    store = make_store(name, create_container=False)
    with pytest.raises(Unavailable):  # a write has nowhere to go: the server is not ready
        store.put("k", io.BytesIO(b"v"))
    with pytest.raises(NotFound):
        store.open("k")
    with pytest.raises(NotFound):
        store.read_range("k", 0, 1)
    store.delete("k")
    assert list(store.list()) == []
    assert not container_exists(conn, name)


# --- SDK errors, from a server that fails as Azure Storage does -----------------------------------


class FailingStorage:
    """An HTTP server that answers every request with `status` and a Storage error body."""

    CODES = {
        403: "AuthorizationFailure",
        404: "BlobNotFound",
        408: "OperationTimedOut",
        409: "BlobAlreadyExists",
        412: "ConditionNotMet",
        416: "InvalidRange",
        429: "TooManyRequests",
        500: "InternalError",
        502: "BadGateway",
        503: "ServerBusy",
        504: "GatewayTimeout",
    }

    def __init__(self) -> None:
        self.status = 503
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = outer.CODES.get(outer.status, "Error")
                body = f"<?xml version='1.0' encoding='utf-8'?><Error><Code>{code}</Code>"
                body += "<Message>failed on purpose</Message></Error>"
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("x-ms-error-code", code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_PUT = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def store(self, **options: Any) -> AzureBlobStore:
        port = self._server.server_address[1]
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
        return AzureBlobStore.from_connection_string(conn, "c", **options)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def failing() -> Iterator[FailingStorage]:
    server = FailingStorage()
    yield server
    server.close()


OPERATIONS: dict[str, Callable[[AzureBlobStore], object]] = {
    "put": lambda s: s.put("k", io.BytesIO(b"data")),
    "put-blocks": lambda s: s.put("k", io.BytesIO(b"d" * (5 * MB))),
    "open": lambda s: s.open("k"),
    "read_range": lambda s: s.read_range("k", 0, 4),
    "delete": lambda s: s.delete("k"),
    "list": lambda s: list(s.list()),
}


@pytest.mark.parametrize("operation", list(OPERATIONS), ids=list(OPERATIONS))
def test_a_busy_service_is_retried_by_the_sdk_policy_then_unavailable(
    failing: FailingStorage, operation: str
) -> None:
    store = failing.store(create_container=False, **NO_WAIT)
    with pytest.raises(Unavailable):
        OPERATIONS[operation](store)
    tries = 2 if operation == "put-blocks" else 1  # two blocks are staged at the same time
    assert failing.requests == 3 * tries, "each request: one try and the policy's two retries"
    store.close()


@pytest.mark.parametrize(
    ("status", "operation", "expected", "requests"),
    [
        (500, "open", Unavailable, 3),
        (502, "put", Unavailable, 3),
        (504, "read_range", Unavailable, 3),
        (408, "put", Unavailable, 3),
        (429, "open", Unavailable, 1),  # the Storage SDK's policy does not retry 429
        (404, "open", NotFound, 1),
        (404, "read_range", NotFound, 1),
        (404, "put", Unavailable, 1),  # a write to a missing container: not ready, not "not found"
        (404, "delete", None, 1),  # already gone
        (404, "list", None, 1),  # no container, no blobs
        (409, "put", Conflict, 1),
        (412, "put", Conflict, 1),
        (416, "read_range", NotFound, 1),
        (412, "open", Unavailable, 1),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_sdk_errors_become_core_errors(
    failing: FailingStorage, status: int, operation: str, expected: type[Exception] | None, requests: int
) -> None:
    failing.status = status
    store = failing.store(create_container=False, **NO_WAIT)
    if expected is None:
        OPERATIONS[operation](store)
    else:
        with pytest.raises(expected):
            OPERATIONS[operation](store)
    assert failing.requests == requests
    store.close()


@pytest.mark.parametrize("status", [400, 403], ids=["bad-request", "forbidden"])
def test_a_misconfiguration_is_not_a_client_error_and_is_not_retried(
    failing: FailingStorage, status: int
) -> None:
    failing.status = status
    store = failing.store(create_container=False, **NO_WAIT)
    with pytest.raises(HttpResponseError) as caught:
        store.put("k", io.BytesIO(b"data"))
    assert not isinstance(caught.value, DicomwebError), "it must reach the 500 handler and its log"
    assert failing.requests == 1
    store.close()


def test_retry_total_sets_the_sdk_retries(failing: FailingStorage) -> None:
    store = failing.store(create_container=False, retry_total=1)
    with pytest.raises(Unavailable):
        store.open("k")
    assert failing.requests == 2
    store.close()


def test_an_unreachable_service_is_unavailable() -> None:
    with socket_closed_port() as port:
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
        store = AzureBlobStore.from_connection_string(conn, "c", **NO_WAIT)
        for operation in OPERATIONS.values():
            with pytest.raises(Unavailable):
                operation(store)
        store.close()


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_a_failed_container_creation_is_tried_again(failing: FailingStorage) -> None:
    store = failing.store(**NO_WAIT)
    with pytest.raises(Unavailable):
        store.put("k", io.BytesIO(b"data"))
    assert failing.requests == 3  # the container creation, retried by the policy
    failing.status = 409  # ContainerAlreadyExists, then the write itself conflicts
    with pytest.raises(Conflict):
        store.put("k", io.BytesIO(b"data"))
    assert failing.requests == 5
    store.close()


INVALID_NAMES = {
    "empty": "",
    "absolute": "/abs",
    "dot-dot": "a/../b",
    "empty-segment": "a//b",
    "dot": "a/./b",
    "trailing-slash": "a/",
    "too-long": "x" * 1025,
}


@pytest.mark.parametrize("key", list(INVALID_NAMES.values()), ids=list(INVALID_NAMES))
def test_invalid_names_are_bad_requests_before_any_request(failing: FailingStorage, key: str) -> None:
    store = failing.store(create_container=False, **NO_WAIT)
    for call in (
        lambda: store.put(key, io.BytesIO(b"x")),
        lambda: store.open(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(BadRequest):
            call()
    assert failing.requests == 0
    store.close()


# --- uploads in blocks ---------------------------------------------------------------------------


class PatternStream(io.RawIOBase):
    """`size` bytes of a repeating 1 MB pattern, made as they are read (no test code holds them)."""

    PATTERN = blob_bytes(MB, seed=5)

    def __init__(self, size: int) -> None:
        self._size, self._position = size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        length = min(len(view), self._size - self._position, MB - self._position % MB)
        if length <= 0:
            return 0
        start = self._position % MB
        view[:length] = self.PATTERN[start : start + length]
        self._position += length
        return length

    @classmethod
    def sha256(cls, size: int) -> str:
        digest = hashlib.sha256()
        for _ in range(size // MB):
            digest.update(cls.PATTERN)
        digest.update(cls.PATTERN[: size % MB])
        return digest.hexdigest()


def test_a_64mb_stream_is_uploaded_in_blocks_and_downloaded_in_chunks_with_bounded_memory(
    make_store: Callable[..., AzureBlobStore],
) -> None:
    size = 64 * MB + 17
    store = make_store()
    list(store.list())  # make the container outside the measured part
    tracemalloc.start()
    try:
        assert store.put("big.dcm", cast(BinaryIO, PatternStream(size))) == size
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest, total, held = hashlib.sha256(), 0, 0
        with store.open("big.dcm") as fp:
            while chunk := fp.read(MB):
                digest.update(chunk)
                total += len(chunk)
                held = max(held, tracemalloc.get_traced_memory()[0])
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert upload_peak < 32 * MB, f"upload peak {upload_peak / MB:.1f} MB"
    assert held < 12 * MB, f"the reader held {held / MB:.1f} MB"
    # The SDK's `list(response)` sizes its list by the response's length: 8 bytes per byte of a
    # chunk, allocated and never touched, for a moment. Bounded by the chunk, not by the blob.
    assert download_peak < 12 * BLOCK_SIZE, f"download peak {download_peak / MB:.1f} MB"
    assert (total, digest.hexdigest()) == (size, PatternStream.sha256(size))
    committed, uncommitted = store._container.get_blob_client("big.dcm").get_block_list("all")
    assert len(committed) == 17 and not uncommitted  # 16 blocks of 4 MB and the last 17 bytes


def test_a_replace_in_blocks_is_seen_whole_or_not_at_all(make_store: Callable[..., AzureBlobStore]) -> None:
    store = make_store(block_size=256 * 1024)
    old, new = blob_bytes(MB + 5, seed=1), blob_bytes(3 * MB // 2, seed=2)
    store.put("k", io.BytesIO(old))
    reader = store.open("k")
    assert store.put("k", io.BytesIO(new), overwrite=True) == len(new)
    assert store.open("k").read() == new
    assert reader.read(10) == old[:10]  # the first chunk was fetched at open
    with pytest.raises(Unavailable):  # the rest would mix two versions: refused, retry
        reader.read()
    reader.close()


def test_concurrent_create_only_puts_in_blocks_have_one_winner_and_no_mixed_blocks(
    make_store: Callable[..., AzureBlobStore],
) -> None:
    writers, size = 6, MB + 1  # 5 blocks of 256 kB each: every writer stages blocks at the same offsets
    first = make_store(block_size=256 * 1024)
    name: str = first._container.container_name
    first.list()
    stores = [make_store(name, block_size=256 * 1024) for _ in range(writers)]
    start = threading.Barrier(writers)

    def put(number: int) -> int | Conflict:
        start.wait(timeout=30)
        try:
            return stores[number].put("race.dcm", io.BytesIO(bytes([0x41 + number]) * size))
        except Conflict as conflict:
            return conflict

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(put, range(writers)))
    winners = [n for n, result in enumerate(results) if not isinstance(result, Conflict)]
    assert len(winners) == 1, results
    assert first.open("race.dcm").read() == bytes([0x41 + winners[0]]) * size


# --- the reader ----------------------------------------------------------------------------------

CHUNK = 64 * 1024
DATA = blob_bytes(5 * CHUNK + 123, seed=9)

Step = tuple[str, int, int]  # ("read", n, _) | ("seek", offset, whence)
READ_SEQUENCES: dict[str, list[Step]] = {
    "front-to-back": [("read", 1000, 0)] * 400,
    "read-all": [("read", -1, 0)],
    "across-chunks": [("seek", CHUNK - 3, 0), ("read", 10, 0), ("read", 2 * CHUNK + 1, 0)],
    "backwards": [("seek", 4 * CHUNK, 0), ("read", 5, 0), ("seek", 7, 0), ("read", 5, 0),
                  ("seek", -3, 1), ("read", 9, 0)],
    "from-end": [("seek", -200, 2), ("read", 1000, 0), ("read", 10, 0)],
    "past-end": [("seek", len(DATA) + 50, 0), ("read", 10, 0), ("seek", 0, 1)],
    "far-forward": [("read", 4, 0), ("seek", 4 * CHUNK + 7, 0), ("read", 100, 0), ("seek", 2, 1),
                    ("read", -1, 0)],
}  # fmt: skip


@pytest.mark.parametrize("steps", list(READ_SEQUENCES.values()), ids=list(READ_SEQUENCES))
def test_the_reader_reads_and_seeks_as_a_file_does(
    make_store: Callable[..., AzureBlobStore], steps: list[Step]
) -> None:
    store = make_store(block_size=CHUNK)
    store.put("k", io.BytesIO(DATA))
    reference = io.BytesIO(DATA)
    with store.open("k") as fp:
        assert (fp.seekable(), fp.readable(), fp.tell()) == (True, True, 0)
        for op, a, b in steps:
            if op == "read":
                assert fp.read(a) == reference.read(a)
            else:
                assert fp.seek(a, b) == reference.seek(a, b)
            assert fp.tell() == reference.tell()
    with pytest.raises(ValueError):
        fp.read(1)


def test_the_reader_fetches_only_the_chunks_it_needs(make_store: Callable[..., AzureBlobStore]) -> None:
    requests = Requests()
    store = make_store(block_size=CHUNK, raw_request_hook=requests)
    store.put("k", io.BytesIO(blob_bytes(40 * CHUNK)))
    gets = lambda: requests.count("GET", "/k")  # noqa: E731
    with store.open("k") as fp:
        assert gets() == 1  # the first chunk, at open
        fp.seek(CHUNK - 10)
        fp.read(10)
        fp.seek(5)
        fp.read(10)
        assert gets() == 1  # inside the chunk in hand: nothing fetched
        fp.seek(30 * CHUNK)
        fp.read(CHUNK)
        assert gets() == 2  # a far seek: one new download, whose first chunk holds what was read
        fp.read(10)
        assert gets() == 3  # reading on: the next chunk of that download
        fp.seek(2 * CHUNK, 1)
        fp.read(10)
        assert gets() == 5  # a short seek forward: read on through the download (one chunk skipped)
        fp.seek(0, 2)
        assert fp.read(1) == b"" and gets() == 5
    with store.open("k") as fp:
        while fp.read(MB):
            pass
    assert gets() == 5 + 40  # front to back: one request per chunk


def test_an_empty_blob_opens_and_reads_empty(make_store: Callable[..., AzureBlobStore]) -> None:
    store = make_store()
    store.put("empty", io.BytesIO(b""))
    with store.open("empty") as fp:
        assert (fp.read(), fp.seek(0, 2)) == (b"", 0)
    assert store.read_range("empty", 0, 0) == b""


def test_a_blob_deleted_while_it_is_read_fails_the_read(make_store: Callable[..., AzureBlobStore]) -> None:
    store = make_store(block_size=CHUNK)
    store.put("k", io.BytesIO(DATA))
    with store.open("k") as fp:
        fp.read(10)
        store.delete("k")
        # Azure answers 404 to the next range; Azurite 412 (its If-Match fails first): a retry is NotFound
        with pytest.raises((NotFound, Unavailable)):
            fp.read()


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, -1)], ids=["negative-offset", "negative-length"])
def test_a_negative_range_is_a_bad_request(
    make_store: Callable[..., AzureBlobStore], offset: int, length: int
) -> None:
    store = make_store()
    store.put("k", io.BytesIO(b"abc"))
    with pytest.raises(BadRequest):
        store.read_range("k", offset, length)


# --- pydicom over the reader ---------------------------------------------------------------------

SAMPLES = {
    "jpeg-120-frames": ("us/color3d_jpeg_baseline.dcm", 120),
    "deflated": ("nm_sc/image_dfl.dcm", 1),
    "big-endian": ("us/ExplVR_BigEnd.dcm", 1),
    "rle-2-frames": ("nm_sc/SC_rgb_rle_2frame.dcm", 2),
    "ct-native": ("ct/CT_small.dcm", 1),
}


@pytest.mark.parametrize(("path", "frame"), list(SAMPLES.values()), ids=list(SAMPLES))
def test_pydicom_parses_decodes_and_transcodes_from_the_reader(
    make_store: Callable[..., AzureBlobStore], path: str, frame: int
) -> None:
    store = make_store(block_size=CHUNK)  # small chunks: the parser's seeks cross many of them
    local = DATA_DIR / path
    with local.open("rb") as src:
        store.put("i.dcm", cast(BinaryIO, src))
    with store.open("i.dcm") as fp, local.open("rb") as ref:
        assert index_frames(fp) == index_frames(ref)
        assert decode_frame(fp, frame) == decode_frame(ref, frame)
        fp.seek(0)
        ref.seek(0)
        assert pydicom.dcmread(fp, stop_before_pixels=True) == pydicom.dcmread(ref, stop_before_pixels=True)
        got, want = io.BytesIO(), io.BytesIO()
        transcode_to_explicit_le(fp, got)
        transcode_to_explicit_le(ref, want)
        assert got.getvalue() == want.getvalue()

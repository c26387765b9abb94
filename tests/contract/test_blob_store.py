"""BlobStore contract: every adapter in conftest.BLOB_STORES behaves the same way."""

from __future__ import annotations

import hashlib
import io
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, cast

import pytest

from shared.core.errors import Conflict, NotFound, Unavailable
from shared.core.ports import BlobStore
from tests.contract.conftest import ConnectBlobStore

KEY = "ab/cd/0123456789abcdef/0001.dcm"
MB = 1024 * 1024


class GeneratedStream(io.RawIOBase):
    """A readable stream of `size` deterministic pseudo-random bytes, made block by block as it is
    read, so a large blob can be written without any test code holding it. It records the largest
    single read asked for, so a test can tell a streaming writer from one that reads it whole."""

    BLOCK = 64 * 1024

    def __init__(self, size: int, seed: int = 7) -> None:
        self._size = size
        self._seed = seed
        self._position = 0
        self.largest_read = 0

    @classmethod
    def block(cls, seed: int, number: int) -> bytes:
        return random.Random(seed * 1_000_003 + number).randbytes(cls.BLOCK)

    @classmethod
    def slice(cls, seed: int, offset: int, length: int) -> bytes:
        """The bytes at [offset, offset + length) of a stream with this seed."""
        out = bytearray()
        number, skip = divmod(offset, cls.BLOCK)
        while len(out) < length:
            out += cls.block(seed, number)[skip:]
            number, skip = number + 1, 0
        return bytes(out[:length])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.largest_read = max(self.largest_read, len(buffer))
        length = min(len(buffer), self._size - self._position)
        if length <= 0:
            return 0
        buffer[:length] = self.slice(self._seed, self._position, length)
        self._position += length
        return length

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for number in range(0, self._size, self.BLOCK):
            digest.update(self.block(self._seed, number // self.BLOCK)[: self._size - number])
        return digest.hexdigest()


def stream(data: bytes) -> BinaryIO:
    return io.BytesIO(data)


def read_all(store: BlobStore, key: str) -> bytes:
    with store.open(key) as fp:
        return fp.read()


# --- put / open ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"x", b"DICM" * 1000, bytes(range(256)) * 4099], ids=["empty", "1-byte", "4kB", "1MB+"]
)
def test_put_returns_the_size_and_open_streams_the_exact_bytes(blob_store: BlobStore, data: bytes) -> None:
    assert blob_store.put(KEY, stream(data)) == len(data)
    assert read_all(blob_store, KEY) == data


def test_put_is_create_only_and_the_first_content_stays(blob_store: BlobStore) -> None:
    blob_store.put(KEY, stream(b"first"))
    with pytest.raises(Conflict):
        blob_store.put(KEY, stream(b"second, longer"))
    assert read_all(blob_store, KEY) == b"first"


def test_overwrite_replaces_the_content(blob_store: BlobStore) -> None:
    blob_store.put(KEY, stream(b"first version, long"))
    assert blob_store.put(KEY, stream(b"second"), overwrite=True) == 6
    assert read_all(blob_store, KEY) == b"second"


def test_overwrite_creates_a_missing_blob(blob_store: BlobStore) -> None:
    assert blob_store.put(KEY, stream(b"new"), overwrite=True) == 3
    assert read_all(blob_store, KEY) == b"new"


def test_a_large_blob_is_written_from_a_stream_and_read_back_exactly(blob_store: BlobStore) -> None:
    size, seed = 20 * MB + 12345, 11
    source = GeneratedStream(size, seed)
    assert blob_store.put(KEY, cast(BinaryIO, source)) == size
    assert 0 < source.largest_read <= 8 * MB, "the writer must stream the source, not read it whole"
    digest, total = hashlib.sha256(), 0
    with blob_store.open(KEY) as fp:
        while chunk := fp.read(MB):
            digest.update(chunk)
            total += len(chunk)
    assert total == size
    assert digest.hexdigest() == GeneratedStream(size, seed).sha256()
    for offset, length in [(0, 10), (MB - 3, 7), (10 * MB + 1, 65536 * 3), (size - 1, 1), (size - 100, 100)]:
        assert blob_store.read_range(KEY, offset, length) == GeneratedStream.slice(seed, offset, length)


class InterruptedStream(io.RawIOBase):
    """`size` bytes of 0x5A; after `stop_at` bytes it either fails like a dropped connection, or
    (with `pause`) signals `paused` and waits for `resume` before it goes on."""

    def __init__(self, size: int, stop_at: int, *, pause: bool = False) -> None:
        self._left, self._until_stop, self._pause = size, stop_at, pause
        self.paused, self.resume = threading.Event(), threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._until_stop == 0:
            if not self._pause:
                raise ConnectionResetError("the client went away")
            self.paused.set()
            assert self.resume.wait(timeout=30)
            self._until_stop = -1
        length = min(len(buffer), self._left, self._until_stop if self._until_stop > 0 else self._left)
        buffer[:length] = b"Z" * length
        self._left -= length
        if self._until_stop > 0:
            self._until_stop -= length
        return length


@pytest.mark.parametrize("overwrite", [False, True], ids=["create", "overwrite"])
def test_a_blob_being_written_is_not_visible_until_the_put_returns(
    blob_store: BlobStore, overwrite: bool
) -> None:
    if overwrite:
        blob_store.put(KEY, stream(b"old content"))
    size = 3 * MB
    source = InterruptedStream(size, MB + 17, pause=True)
    with ThreadPoolExecutor(1) as pool:
        writing = pool.submit(blob_store.put, KEY, cast(BinaryIO, source), overwrite=overwrite)
        try:
            assert source.paused.wait(timeout=30)
            if overwrite:
                assert read_all(blob_store, KEY) == b"old content"
                assert list(blob_store.list()) == [KEY]
            else:
                with pytest.raises(NotFound):
                    blob_store.open(KEY)
                assert list(blob_store.list()) == []
        finally:
            source.resume.set()
        assert writing.result(timeout=60) == size
    assert read_all(blob_store, KEY) == b"Z" * size


@pytest.mark.parametrize("overwrite", [False, True], ids=["create", "overwrite"])
def test_a_put_whose_source_fails_leaves_nothing_and_a_retry_succeeds(
    blob_store: BlobStore, overwrite: bool
) -> None:
    if overwrite:
        blob_store.put(KEY, stream(b"old content"))
    with pytest.raises((OSError, Unavailable)):
        blob_store.put(KEY, cast(BinaryIO, InterruptedStream(3 * MB, MB + 17)), overwrite=overwrite)
    if overwrite:
        assert read_all(blob_store, KEY) == b"old content"
    else:
        with pytest.raises(NotFound):
            blob_store.open(KEY)
    assert list(blob_store.list()) == ([KEY] if overwrite else [])
    assert blob_store.put(KEY, stream(b"retry"), overwrite=overwrite) == 5
    assert read_all(blob_store, KEY) == b"retry"


# --- read_range -----------------------------------------------------------------------------------

DATA = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable within 256


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 1), (0, len(DATA)), (1, 255), (132, 4096), (len(DATA) - 1, 1), (len(DATA) - 300, 300), (5000, 1)],
    ids=["first-byte", "whole", "offset-1", "middle", "last-byte", "tail", "single-middle"],
)
def test_read_range_returns_exactly_the_bytes_at_the_offset(
    blob_store: BlobStore, offset: int, length: int
) -> None:
    blob_store.put(KEY, stream(DATA))
    assert blob_store.read_range(KEY, offset, length) == DATA[offset : offset + length]


@pytest.mark.parametrize(
    "read",
    [lambda s, k: s.open(k), lambda s, k: s.read_range(k, 0, 1)],
    ids=["open", "read_range"],
)
def test_reading_a_missing_blob_is_not_found(
    blob_store: BlobStore, read: Callable[[BlobStore, str], object]
) -> None:
    blob_store.put("ab/other.dcm", stream(b"x"))
    with pytest.raises(NotFound):
        read(blob_store, KEY)


# --- delete ---------------------------------------------------------------------------------------


def test_delete_removes_the_blob_and_is_idempotent(blob_store: BlobStore) -> None:
    blob_store.put(KEY, stream(b"content"))
    blob_store.delete(KEY)
    with pytest.raises(NotFound):
        blob_store.open(KEY)
    blob_store.delete(KEY)  # already gone: not an error
    blob_store.delete("never/written.dcm")
    assert list(blob_store.list()) == []


def test_a_deleted_key_can_be_created_again(blob_store: BlobStore) -> None:
    blob_store.put(KEY, stream(b"old"))
    blob_store.delete(KEY)
    assert blob_store.put(KEY, stream(b"new!")) == 4
    assert read_all(blob_store, KEY) == b"new!"


def test_delete_leaves_the_neighbours(blob_store: BlobStore) -> None:
    for key in ("p/q/1.dcm", "p/q/1.json", "p/q/1.frames.json"):
        blob_store.put(key, stream(key.encode()))
    blob_store.delete("p/q/1.dcm")
    assert sorted(blob_store.list("p/")) == ["p/q/1.frames.json", "p/q/1.json"]
    assert read_all(blob_store, "p/q/1.json") == b"p/q/1.json"


# --- list -----------------------------------------------------------------------------------------

NESTED = [
    "00/1f/hash-a/v1.dcm",
    "00/1f/hash-a/v1.json",
    "00/1f/hash-a/v1.frames.json",
    "00/1f/hash-b/v2.dcm",
    "00/2a/hash-c/v1.dcm",
    "00/1fx.dcm",
    "ff/ee/deep/er/still/deeper.bin",
    "top.bin",
]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", NESTED),
        ("00/", NESTED[:6]),
        ("00/1f/", NESTED[:4]),
        ("00/1f", [*NESTED[:4], "00/1fx.dcm"]),  # a prefix of the name, not a folder
        ("00/1f/hash-a/", NESTED[:3]),
        ("00/1f/hash-a/v1.", NESTED[:3]),
        ("00/1f/hash-a/v1.json", ["00/1f/hash-a/v1.json"]),
        ("ff/ee/deep/", ["ff/ee/deep/er/still/deeper.bin"]),
        ("t", ["top.bin"]),
        ("zz/", []),
        ("00/1f/hash-a/v1.dcm/", []),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_list_returns_the_keys_that_start_with_the_prefix(
    blob_store: BlobStore, prefix: str, expected: list[str]
) -> None:
    for key in NESTED:
        blob_store.put(key, stream(key.encode()))
    listed = list(blob_store.list(prefix))
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(expected)


def test_nested_keys_read_back_their_own_content(blob_store: BlobStore) -> None:
    for key in NESTED:
        blob_store.put(key, stream(key.encode() * 3))
    for key in NESTED:
        assert read_all(blob_store, key) == key.encode() * 3


def test_an_empty_store_lists_nothing(blob_store: BlobStore) -> None:
    assert list(blob_store.list()) == []
    assert list(blob_store.list("00/")) == []


def test_a_second_client_sees_the_same_blobs(connect_blob_store: ConnectBlobStore) -> None:
    writer, reader = connect_blob_store(), connect_blob_store()
    writer.put(KEY, stream(b"shared"))
    assert read_all(reader, KEY) == b"shared"
    assert list(reader.list()) == [KEY]
    reader.delete(KEY)
    with pytest.raises(NotFound):
        writer.open(KEY)


# --- concurrency ----------------------------------------------------------------------------------


class RacingStream(io.RawIOBase):
    """`size` copies of one byte in small reads. Every writer's first read waits until all have
    started, and its end of stream until all have read everything, so that the writers race to
    make their blob visible at the same moment (where a check-then-write store breaks)."""

    def __init__(self, byte: int, size: int, start: threading.Barrier, end: threading.Barrier) -> None:
        self._byte, self._left, self._start, self._end = byte, size, start, end
        self._started = self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._started:
            self._started = True
            self._start.wait(timeout=30)
        if self._left == 0 and not self._ended:
            self._ended = True
            self._end.wait(timeout=30)
        length = min(len(buffer), self._left, 64 * 1024)
        buffer[:length] = bytes([self._byte]) * length
        self._left -= length
        return length

    def finish(self) -> None:
        """Pass the barriers a writer did not reach by reading (it stopped early, or never read)."""
        if not self._started:
            self._started = True
            self._start.wait(timeout=30)
        if not self._ended:
            self._ended = True
            self._end.wait(timeout=30)


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_create_only_puts_of_one_key_have_exactly_one_winner(
    connect_blob_store: ConnectBlobStore, round_: int
) -> None:
    writers, size = 8, 2 * MB + 1
    clients = [connect_blob_store() for _ in range(writers)]
    start, end = threading.Barrier(writers), threading.Barrier(writers)

    def put(number: int) -> int | Conflict:
        source = RacingStream(0x41 + number, size, start, end)
        try:
            return clients[number].put(KEY, cast(BinaryIO, source))
        except Conflict as conflict:
            return conflict
        finally:
            source.finish()

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(put, range(writers)))
    winners = [n for n, result in enumerate(results) if not isinstance(result, Conflict)]
    assert len(winners) == 1, results
    assert results[winners[0]] == size
    content = read_all(clients[0], KEY)
    assert content == bytes([0x41 + winners[0]]) * size, "the blob is one writer's complete content"
    assert list(clients[0].list()) == [KEY]

"""shared.web.streaming.prefetched: a blocking chunk iterator streamed in bounded, read-ahead batches."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.web.streaming import prefetched

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Source:
    """A blocking iterator of `count` chunks of `size` bytes that records how far it was read."""

    def __init__(self, count: int, size: int, fail_at: int | None = None) -> None:
        self.count, self.size, self.fail_at = count, size, fail_at
        self.read = 0
        self.closed = False

    def chunks(self) -> Iterator[bytes]:
        try:
            for n in range(self.count):
                if n == self.fail_at:
                    raise OSError("the disk went away")
                self.read += 1
                yield bytes([n % 256]) * self.size
        finally:
            self.closed = True


async def test_every_chunk_arrives_in_order() -> None:
    source = Source(count=50, size=1000)
    received = [chunk async for chunk in prefetched(source.chunks(), budget=4096)]
    assert received == [bytes([n]) * 1000 for n in range(50)]
    assert source.closed


async def test_reading_stays_at_most_two_batches_ahead_of_the_consumer() -> None:
    source = Source(count=100, size=1000)
    stream = prefetched(source.chunks(), budget=5000)
    consumed = 0
    async for _chunk in stream:
        consumed += 1
        # the batch being sent plus the one read ahead: 5 chunks each
        assert source.read - consumed < 2 * 5
    assert consumed == 100


async def test_a_consumer_that_stops_early_closes_the_source() -> None:
    source = Source(count=1000, size=1000)
    stream = prefetched(source.chunks(), budget=4000)
    async for _chunk in stream:
        break
    await stream.aclose()
    assert source.closed
    assert source.read < 20


async def test_a_read_error_reaches_the_consumer_after_the_chunks_before_it() -> None:
    source = Source(count=30, size=100, fail_at=12)
    received = []
    with pytest.raises(OSError, match="the disk went away"):
        async for chunk in prefetched(source.chunks(), budget=250):
            received.append(chunk)
    assert len(received) == 12
    assert source.closed


async def test_empty_chunks_are_dropped_and_an_empty_source_ends_at_once() -> None:
    assert [c async for c in prefetched(iter([b"", b"a", b"", b"b"]))] == [b"a", b"b"]
    assert [c async for c in prefetched(iter([]))] == []

"""shared.web.stow._Pipeline: parts are stored in order, one at a time, while the next is received."""

from __future__ import annotations

import asyncio

import pytest

from shared.core.model import StoreOutcome, StoreStatus
from shared.web.stow import _Pipeline

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def outcome(n: int) -> StoreOutcome:
    return StoreOutcome(StoreStatus.STORED, sop_instance_uid=f"1.2.{n}")


class Spool:
    """Stands for a part's spool: records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_outcomes_keep_the_order_of_the_parts_whatever_each_store_takes() -> None:
    pipeline = _Pipeline()
    running: list[int] = []
    peak = 0

    async def store(n: int, seconds: float) -> StoreOutcome:
        nonlocal peak
        running.append(n)
        peak = max(peak, len(running))
        await asyncio.sleep(seconds)
        running.remove(n)
        return outcome(n)

    for n, seconds in enumerate([0.03, 0.0, 0.02, 0.0]):
        await pipeline.add(store(n, seconds), Spool())  # type: ignore[arg-type]
        assert pipeline.count == n + 1
    await pipeline.add_outcome(outcome(99))  # a refused part
    got = await pipeline.outcomes()
    assert [o.sop_instance_uid for o in got] == ["1.2.0", "1.2.1", "1.2.2", "1.2.3", "1.2.99"]
    assert peak == 1, "one part is stored at a time"


async def test_the_next_part_is_received_while_a_store_runs() -> None:
    pipeline = _Pipeline()
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> StoreOutcome:
        started.set()
        await release.wait()
        return outcome(1)

    await pipeline.add(slow(), Spool())  # type: ignore[arg-type]  # returns at once: the caller goes on reading the body
    await asyncio.wait_for(started.wait(), 1)
    assert pipeline.count == 1
    release.set()
    assert [o.sop_instance_uid for o in await pipeline.outcomes()] == ["1.2.1"]


async def test_a_store_under_way_finishes_even_when_the_request_is_cancelled() -> None:
    pipeline = _Pipeline()
    finished = asyncio.Event()

    async def store() -> StoreOutcome:
        await asyncio.sleep(0.05)
        finished.set()
        return outcome(1)

    async def request() -> None:
        try:
            await pipeline.add(store(), Spool())  # type: ignore[arg-type]
            await asyncio.sleep(10)  # receiving the next part when the client goes away
        finally:
            await pipeline.settle()

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()
    assert [o.sop_instance_uid for o in await pipeline.outcomes()] == ["1.2.1"]


@pytest.mark.parametrize("limit", [0, 10, 1 << 20])
def test_a_spool_gives_back_every_byte_in_memory_or_on_disk(limit: int) -> None:
    from shared.web.stow import _Spool

    chunks = [bytes([n]) * (n + 3) for n in range(40)]
    spool = _Spool(limit)
    for chunk in chunks:
        spool.write(chunk)
    on_disk = spool._file is not None
    assert on_disk == (limit < sum(map(len, chunks))), "over the limit it is a temporary file"
    fp = spool.file()
    assert fp.read() == b"".join(chunks)
    fp.seek(5)
    assert fp.read(3) == b"".join(chunks)[5:8]
    spool.close()
    if on_disk:
        assert fp.closed


async def test_a_request_cancelled_while_waiting_for_the_previous_store_lets_it_finish() -> None:
    """Cancelled inside settle(): the store under way is waited for and reported; the part that was
    about to start is never run and its spool is closed."""
    pipeline = _Pipeline()
    finished = asyncio.Event()

    async def first() -> StoreOutcome:
        await asyncio.sleep(0.05)
        finished.set()
        return outcome(1)

    async def second() -> StoreOutcome:
        raise AssertionError("never started")

    spool = Spool()
    await pipeline.add(first(), Spool())  # type: ignore[arg-type]
    task = asyncio.ensure_future(pipeline.add(second(), spool))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)  # now waiting in settle() for the first store
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set(), "the first store finished before the cancellation went on"
    assert spool.closed
    assert [o.sop_instance_uid for o in await pipeline.outcomes()] == ["1.2.1"]


async def test_when_a_store_raises_the_next_part_is_not_started_and_its_spool_is_closed() -> None:
    pipeline = _Pipeline()

    async def failing() -> StoreOutcome:
        raise RuntimeError("the index went away")

    async def never() -> StoreOutcome:
        raise AssertionError("never started")

    spool = Spool()
    await pipeline.add(failing(), Spool())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="the index went away"):
        await pipeline.add(never(), spool)  # type: ignore[arg-type]
    assert spool.closed
    assert await pipeline.outcomes() == []

"""shared.web.stow._Pipeline: the parts of a STOW request are stored in order, in batches, one
batch at a time, while the next parts are received.

The instance store is a stand-in here (it records the batches it is given and can be held), so
that what reaches it when can be stated; the real store behind it is tested in test_store.py and
through HTTP in tests/behaviour/test_stow.py.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, BinaryIO

import pytest

from shared.core.model import FailureReason, StoreOutcome, StoreStatus
from shared.web.stow import _Pipeline, _Spool

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Spool:
    """Stands for a part's spool: its bytes name the part; records whether it was closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def file(self) -> BinaryIO:
        assert not self.closed, "a part is read before its spool is closed"
        return io.BytesIO(self.name.encode())

    def close(self) -> None:
        self.closed = True


class Store:
    """Records each batch it is asked to store; `hold()` keeps the next batches waiting until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.running = 0
        self.peak = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_with: Exception | None = None

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def store_instances(
        self, parts: Sequence[tuple[BinaryIO, int]], *, expected_study: str | None = None
    ) -> list[StoreOutcome]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        names = [fp.read().decode() for fp, _size in parts]
        self.batches.append(names)
        self.entered.set()
        try:
            assert self.gate.wait(5), "the test never released the store"
            if self.fail_with is not None:
                raise self.fail_with
            return [StoreOutcome(StoreStatus.STORED, sop_instance_uid=name) for name in names]
        finally:
            self.running -= 1


def pipeline(store: Store, parts: int = 100, size: int = 1 << 20) -> _Pipeline:
    app: Any = SimpleNamespace(
        service=SimpleNamespace(store=store),
        settings=SimpleNamespace(store_batch_parts=parts, store_batch_bytes=size),
    )
    return _Pipeline(app, None)


async def entered(store: Store) -> None:
    """Wait until the store has been called (in its worker thread)."""
    for _ in range(500):
        if store.entered.is_set():
            store.entered.clear()
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the store was never called")


def refused(name: str) -> StoreOutcome:
    return StoreOutcome(StoreStatus.FAILED, sop_instance_uid=name, reason=FailureReason.CANNOT_UNDERSTAND)


def names(outcomes: list[StoreOutcome]) -> list[str | None]:
    return [o.sop_instance_uid for o in outcomes]


async def test_parts_received_while_a_batch_is_stored_go_together_as_the_next_batch() -> None:
    store = Store()
    p = pipeline(store)
    store.hold()
    spools = [Spool(f"p{n}") for n in range(4)]
    await p.add(spools[0], 10)  # the store is free: the first part starts at once
    await entered(store)
    for spool in spools[1:]:
        await p.add(spool, 10)  # returns at once: the caller goes on reading the body
    assert p.count == 4
    assert store.batches == [["p0"]]
    store.release()
    assert names(await p.outcomes()) == ["p0", "p1", "p2", "p3"]
    assert store.batches == [["p0"], ["p1", "p2", "p3"]]
    assert store.peak == 1, "one batch is stored at a time"
    assert all(s.closed for s in spools), "a part's spool is closed once it is stored"


async def test_outcomes_keep_the_order_of_the_parts_with_refused_parts_among_them() -> None:
    store = Store()
    p = pipeline(store)
    store.hold()
    await p.add(Spool("a"), 10)
    await entered(store)
    await p.add_outcome(refused("bad1"))
    await p.add(Spool("b"), 10)
    await p.add_outcome(refused("bad2"))
    await p.add(Spool("c"), 10)
    store.release()
    got = await p.outcomes()
    assert names(got) == ["a", "bad1", "b", "bad2", "c"]
    assert [o.status for o in got] == [StoreStatus.STORED, StoreStatus.FAILED] * 2 + [StoreStatus.STORED]
    assert store.batches == [["a"], ["b", "c"]], "refused parts never reach the store"


@pytest.mark.parametrize(("parts", "size", "waiting"), [(2, 1 << 20, 2), (100, 25, 3)])
async def test_past_the_batch_limits_receiving_waits_for_the_store(
    parts: int, size: int, waiting: int
) -> None:
    """`store_batch_parts` or `store_batch_bytes` bound what waits in memory: the add that reaches
    either does not return until the batch under way is done."""
    store = Store()
    p = pipeline(store, parts=parts, size=size)
    store.hold()
    await p.add(Spool("first"), 10)
    await entered(store)
    for n in range(waiting - 1):
        await asyncio.wait_for(p.add(Spool(f"w{n}"), 10), 1)  # under the limits: returns at once
    blocked = asyncio.ensure_future(p.add(Spool("last"), 10))
    await asyncio.sleep(0.05)
    assert not blocked.done(), "over a limit, the add waits for the store"
    store.release()
    await asyncio.wait_for(blocked, 5)
    assert names(await p.outcomes()) == ["first", *(f"w{n}" for n in range(waiting - 1)), "last"]
    assert store.batches[1] == [*(f"w{n}" for n in range(waiting - 1)), "last"]


async def test_a_batch_waiting_at_the_end_of_the_body_is_stored_before_the_answer() -> None:
    store = Store()
    p = pipeline(store)
    store.hold()
    await p.add(Spool("a"), 10)
    await entered(store)
    await p.add(Spool("b"), 10)
    store.release()
    await p.drain()  # what the request does in its `finally`, whatever happened
    assert store.batches == [["a"], ["b"]]
    assert names(await p.outcomes()) == ["a", "b"]


async def test_a_cancelled_request_lets_the_store_under_way_finish_and_drops_waiting_parts() -> None:
    store = Store()
    p = pipeline(store, parts=1)
    store.hold()
    waiting = Spool("waiting")

    async def request() -> None:
        try:
            await p.add(Spool("under-way"), 10)
            await p.add(waiting, 10)  # at the limit: waits for the store, and is cancelled there
        finally:
            await p.drain()

    task = asyncio.ensure_future(request())
    await entered(store)
    await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.sleep(0.02)
    assert not task.done(), "the cancellation waits for the store under way"
    store.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.batches == [["under-way"]], "nothing new starts once cancelled"
    assert waiting.closed, "the spool of a part that will not be stored is closed"
    assert names(await p.outcomes()) == ["under-way"]


async def test_when_a_store_raises_nothing_more_is_stored_and_the_error_reaches_the_request() -> None:
    store = Store()
    store.fail_with = RuntimeError("the index went away")
    p = pipeline(store, parts=1)
    store.hold()
    await p.add(Spool("a"), 10)
    await entered(store)
    later = Spool("b")
    blocked = asyncio.ensure_future(p.add(later, 10))
    await asyncio.sleep(0.02)
    store.release()
    with pytest.raises(RuntimeError, match="the index went away"):
        await blocked
    await p.drain()
    assert later.closed
    assert store.batches == [["a"]]
    with pytest.raises(RuntimeError, match="the index went away"):
        await p.outcomes()


@pytest.mark.parametrize("limit", [0, 10, 1 << 20])
def test_a_spool_gives_back_every_byte_in_memory_or_on_disk(limit: int) -> None:
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


async def test_a_request_cancelled_while_its_body_is_received_starts_no_new_batch() -> None:
    """Through the STOW handler's own loop: the client goes away while the body is still coming.
    The part being stored finishes; the part received and waiting is never stored."""
    from starlette.requests import Request

    from shared.core.media import parse_media_type
    from shared.web.stow import _Limits, _store_multipart

    store = Store()
    store.hold()
    app: Any = SimpleNamespace(
        service=SimpleNamespace(store=store),
        settings=SimpleNamespace(
            store_batch_parts=100,
            store_batch_bytes=1 << 20,
            spool_memory_bytes=1 << 20,
            max_request_bytes=1 << 30,
            max_instance_bytes=1 << 30,
            max_parts=100,
        ),
    )
    content_type = 'multipart/related; type="application/dicom"; boundary=b0undary'
    # A and B whole (B ends where C's delimiter begins), then the first bytes of C
    first = (
        b"".join(
            b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + name + b"\r\n" for name in (b"A", b"B")
        )
        + b"--b0undary\r\nContent-Type: application/dicom\r\n\r\nC..."
    )
    never = asyncio.Event()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": first, "more_body": True}
        await never.wait()  # the rest of the body never comes
        raise AssertionError("unreachable")

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode())]}
    request = Request(scope, receive)
    task = asyncio.ensure_future(
        _store_multipart(request, app, _Limits(app), parse_media_type(content_type), None)
    )
    await entered(store)  # A is being stored; B has been received and waits
    await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.sleep(0.02)
    store.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.batches == [["A"]], "B was not stored after the cancellation"

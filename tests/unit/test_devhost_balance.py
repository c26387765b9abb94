"""Least-connections balancing between the dev host's worker processes (devhost.balance).

The gate and the shared table are tested as they are; `BalancedServer` runs in this process on a
real listening socket, under plain asyncio and under uvloop, with a second worker simulated by a
slot of the table. The process-level behaviour is in tests/e2e/test_devhost_workers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.supervisors import multiprocess

from devhost import balance
from devhost.balance import (
    STALE_NS,
    BalancedServer,
    ConnectionTable,
    Slot,
    balancing,
    busy_connections,
    may_accept,
)

NOW = 10 * STALE_NS  # an arbitrary monotonic instant, in ns
FRESH = NOW - STALE_NS // 10  # a heartbeat well within STALE_NS
LIVE = {101, 102, 103}


def alive(pid: int) -> bool:
    return pid in LIVE


def slot(pid: int, connections: int, beat_ns: int = FRESH, busy: int = 0) -> Slot:
    return Slot(pid=pid, connections=connections, beat_ns=beat_ns, busy=busy)


# --- the gate -------------------------------------------------------------------------------


def test_the_least_loaded_worker_may_accept_and_a_busier_one_may_not() -> None:
    others_of_2 = [slot(102, 3), slot(103, 2)]
    assert may_accept(1, others_of_2, NOW, alive)
    assert not may_accept(3, [slot(101, 1), slot(103, 2)], NOW, alive)


def test_workers_tied_with_the_least_loaded_may_all_accept() -> None:
    assert may_accept(2, [slot(102, 2), slot(103, 5)], NOW, alive)
    assert may_accept(0, [slot(102, 0)], NOW, alive)


def test_busy_connections_weigh_before_open_ones() -> None:
    # One busy connection here against three idle ones there: the other worker takes the next.
    assert not may_accept(1, [slot(101, 3, busy=0)], NOW, alive, busy=1)
    assert may_accept(3, [slot(101, 1, busy=1)], NOW, alive, busy=0)
    # Busy tied: the open connections decide, as before.
    assert not may_accept(2, [slot(101, 1, busy=1)], NOW, alive, busy=1)
    assert may_accept(1, [slot(101, 1, busy=1)], NOW, alive, busy=1)


class _Cycle:
    def __init__(self, complete: bool) -> None:
        self.response_complete = complete


class _Protocol:
    def __init__(self, cycle: _Cycle | None) -> None:
        self.cycle = cycle


def test_a_connection_is_idle_only_between_requests() -> None:
    assert busy_connections([_Protocol(None)]) == 1  # accepted, no request yet
    assert busy_connections([_Protocol(_Cycle(complete=False))]) == 1  # a request in flight
    assert busy_connections([_Protocol(_Cycle(complete=True))]) == 0  # kept alive, between requests
    assert busy_connections([object()]) == 1  # a protocol without a cycle: counted as busy
    mixed = [_Protocol(_Cycle(complete=True)), _Protocol(None), _Protocol(_Cycle(complete=True))]
    assert busy_connections(mixed) == 1


def test_a_worker_alone_always_may_accept() -> None:
    assert may_accept(7, [], NOW, alive)
    assert may_accept(7, [slot(0, 0), slot(0, 0)], NOW, alive)  # free slots


def test_the_slot_of_a_dead_worker_holds_no_one_back() -> None:
    assert not may_accept(2, [slot(101, 0)], NOW, alive)
    assert may_accept(2, [slot(999, 0)], NOW, alive)  # 999: no such process


def test_a_worker_whose_heartbeat_stopped_holds_no_one_back() -> None:
    """Stopped, hung, or dead and not yet reaped (a zombie still has its pid)."""
    assert not may_accept(2, [slot(101, 0, beat_ns=NOW - STALE_NS)], NOW, alive)
    assert may_accept(2, [slot(101, 0, beat_ns=NOW - STALE_NS - 1)], NOW, alive)


def test_real_liveness_ignores_a_pid_that_has_exited() -> None:
    from devhost.balance import pid_alive

    child = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    child.start()
    child.join()
    assert child.pid is not None
    assert pid_alive(os.getpid())
    assert not pid_alive(child.pid)
    assert not may_accept(1, [slot(os.getpid(), 0)], NOW, pid_alive)
    assert may_accept(1, [slot(child.pid, 0)], NOW, pid_alive)


# --- the table ------------------------------------------------------------------------------


@pytest.fixture
def table() -> Iterator[ConnectionTable]:
    made = ConnectionTable(capacity=4, alive=alive)
    yield made
    made.close()


def test_each_worker_claims_its_own_slot_with_no_connections(table: ConnectionTable) -> None:
    assert [table.claim(pid, FRESH) for pid in (101, 102, 103)] == [0, 1, 2]
    assert table.slots()[:3] == [slot(101, 0), slot(102, 0), slot(103, 0)]
    assert table.slots()[3] == slot(0, 0, beat_ns=0)


def test_the_gate_reads_the_counts_the_workers_publish(table: ConnectionTable) -> None:
    first, second = table.claim(101, FRESH), table.claim(102, FRESH)
    assert first is not None and second is not None
    assert table.may_accept(first, NOW) and table.may_accept(second, NOW)  # 0 and 0
    table.publish(first, 1)
    assert not table.may_accept(first, NOW)
    assert table.may_accept(second, NOW)
    table.publish(second, 1)
    assert table.may_accept(first, NOW) and table.may_accept(second, NOW)  # 1 and 1
    table.publish(second, 0)  # a connection of the second worker closed
    assert not table.may_accept(first, NOW)


def test_a_slot_whose_worker_died_is_free_again(table: ConnectionTable) -> None:
    LIVE.add(104)
    try:
        assert table.claim(101, FRESH) == 0
        assert table.claim(104, FRESH) == 1
        table.publish(1, 5)
    finally:
        LIVE.discard(104)  # killed, its count left behind
    assert table.claim(102, FRESH) == 1  # the lowest free slot: the dead worker's
    assert table.slot(1) == slot(102, 0)


def test_a_released_slot_is_free_again_and_only_its_holder_releases_it(table: ConnectionTable) -> None:
    table.claim(101, FRESH)
    table.claim(102, FRESH)
    table.publish(0, 3)
    table.release(0, 102)  # not 102's slot: nothing happens
    assert table.slot(0) == slot(101, 3)
    table.release(0, 101)  # worker 101 shuts down gracefully
    assert table.slot(0).pid == 0
    assert table.may_accept(1, NOW)
    assert table.claim(103, FRESH) == 0


def test_a_less_busy_worker_is_one_live_with_fewer_busy_connections(table: ConnectionTable) -> None:
    mine = table.claim(101, FRESH)
    other = table.claim(102, FRESH)
    assert mine is not None and other is not None
    table.publish(other, 3, busy=1)
    assert table.has_less_busy(mine, 2, NOW)
    assert not table.has_less_busy(mine, 1, NOW)  # 1 is not fewer than 1
    table.beat(other, NOW - STALE_NS - 1)
    assert not table.has_less_busy(mine, 2, NOW)  # its heartbeat stopped: it does not count


def test_a_full_table_has_no_slot_to_give(table: ConnectionTable) -> None:
    LIVE.add(104)
    try:
        assert [table.claim(pid, FRESH) for pid in (101, 102, 103, 104)] == [0, 1, 2, 3]
        assert table.claim(101, FRESH) is None
    finally:
        LIVE.discard(104)


def _child_claims_and_publishes(table: ConnectionTable) -> None:
    index = table.claim(os.getpid(), FRESH)
    assert index is not None
    table.publish(index, 4)


def test_the_table_is_shared_with_forked_processes() -> None:
    table = ConnectionTable(capacity=4)
    try:
        table.claim(os.getpid(), FRESH)
        child = multiprocessing.get_context("fork").Process(target=_child_claims_and_publishes, args=(table,))
        child.start()
        child.join()
        assert child.exitcode == 0
        assert table.slot(1) == slot(child.pid or -1, 4)
        assert table.claim(os.getppid(), FRESH) == 1  # the child has exited: its slot is free
    finally:
        table.close()


# --- BalancedServer in this process ---------------------------------------------------------


_release: asyncio.Event | None = None  # what GET /slow waits for (made in each scenario's loop)


async def _app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    assert scope["type"] == "http"
    if scope["path"] == "/slow":
        assert _release is not None
        await _release.wait()
    body = b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": body})


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dev extra
        factories.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip(reason="uvloop missing")))
    else:
        factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


class _Request:
    """One keep-alive HTTP/1.1 connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, path: str = "/") -> None:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        await self.writer.drain()

    async def answer(self) -> bytes:
        return (await self.answer_with_head())[1]

    async def answer_with_head(self) -> tuple[bytes, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        return head.lower(), await self.reader.readexactly(2)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def _serving(table: ConnectionTable, workers: int = 1) -> AsyncIterator[tuple[BalancedServer, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = int(listener.getsockname()[1])
    config = uvicorn.Config(_app, lifespan="off", log_config=None, access_log=False, workers=workers)
    server = BalancedServer(config, table)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        yield server, port
    finally:
        server.should_exit = True
        await task
        listener.close()


async def _until(condition: Callable[[], bool]) -> None:
    """Waits (bounded) until the server has caught up with what the client did."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


async def _balanced_server_scenario() -> None:
    table = ConnectionTable(capacity=4)
    try:
        async with _serving(table) as (server, port):
            assert server.slot == 0
            assert table.slot(0).pid == os.getpid()
            # A second worker, simulated: a live pid, 0 connections, a heartbeat that stays fresh.
            other = table.claim(os.getppid(), 10**18)
            assert other == 1

            first = _Request(*await asyncio.open_connection("127.0.0.1", port))
            await first.send()
            assert await first.answer() == b"ok"  # 0 and 0: either may accept
            assert table.slot(0).connections == 1
            await _until(lambda: table.slot(0).busy == 0)  # kept alive, idle between requests

            # 1 against the other worker's 0: this worker leaves the next connection alone.
            second = _Request(*await asyncio.open_connection("127.0.0.1", port))
            await second.send()
            answer = asyncio.ensure_future(second.answer())
            done, _ = await asyncio.wait({answer}, timeout=0.3)
            assert not done
            assert table.slot(0).connections == 1

            table.publish(other, 1)  # the other worker took one too: tied, this one may accept
            assert await answer == b"ok"
            assert table.slot(0).connections == 2

            await first.send()  # a kept-alive connection is served whatever the gate says
            assert await first.answer() == b"ok"
            await first.close()
            await _until(lambda: table.slot(0).connections == 1)
            await second.close()
            await _until(lambda: table.slot(0).connections == 0)
        assert table.slot(0).pid == 0  # shut down: the slot is free
    finally:
        table.close()


@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_a_balanced_worker_counts_its_connections_and_waits_for_its_turn(loop_factory: Any) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_balanced_server_scenario())


def _run_scenario(
    loop_factory: Any,
    scenario: Callable[[ConnectionTable, int, asyncio.Event], Awaitable[None]],
    workers: int = 1,
) -> None:
    """Runs `scenario(table, port, release)` against a BalancedServer of a run of `workers`, which
    holds slot 0 of a fresh table, on a loop made by `loop_factory` (None: asyncio's). GET /slow
    requests end once `release` is set, which it is in the end whatever happens."""

    async def main() -> None:
        global _release
        release = _release = asyncio.Event()
        table = ConnectionTable(capacity=4)
        try:
            async with _serving(table, workers) as (_server, port):
                try:
                    await scenario(table, port, release)
                finally:
                    release.set()
        finally:
            _release = None
            table.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


async def _not_answered_yet(request: _Request) -> asyncio.Future[bytes]:
    """The answer to come of a request sent; asserts that none came within 0.3 s."""
    answer = asyncio.ensure_future(request.answer())
    done, _ = await asyncio.wait({answer}, timeout=0.3)
    assert not done
    return answer


async def _busy_connection_steps(table: ConnectionTable, port: int, release: asyncio.Event) -> None:
    other = table.claim(os.getppid(), 10**18)
    assert other == 1
    table.publish(other, 3, busy=0)  # the other worker: three idle kept-alive connections

    slow = _Request(*await asyncio.open_connection("127.0.0.1", port))
    await slow.send("/slow")  # (0 busy, 0 open) against (0, 3): this worker takes it
    await _until(lambda: table.slot(0).busy == 1 and table.slot(0).connections == 1)

    # One busy connection here against three idle ones there: the next is the other's, although
    # this worker has fewer open connections.
    second = _Request(*await asyncio.open_connection("127.0.0.1", port))
    await second.send()
    answer = await _not_answered_yet(second)
    assert table.slot(0).connections == 1

    release.set()  # the slow request ends: (0, 1) against (0, 3), this worker may accept
    assert await slow.answer() == b"ok"
    assert await answer == b"ok"
    await _until(lambda: table.slot(0).connections == 2 and table.slot(0).busy == 0)
    await slow.close()
    await second.close()


@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_a_worker_busy_with_a_request_leaves_new_connections_to_one_with_idle_ones(
    loop_factory: Any,
) -> None:
    _run_scenario(loop_factory, _busy_connection_steps)


async def _startup_steps(table: ConnectionTable, port: int, _event: asyncio.Event) -> None:
    # The second worker of the run has not claimed its slot yet: nothing is accepted.
    first = _Request(*await asyncio.open_connection("127.0.0.1", port))
    await first.send()
    answer = await _not_answered_yet(first)
    assert table.slot(0).connections == 0
    table.claim(os.getppid(), 10**18)  # it is up: the first worker may accept (0 and 0)
    assert await answer == b"ok"
    await first.close()


@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_a_starting_worker_waits_for_the_other_workers_of_the_run_before_accepting(
    loop_factory: Any,
) -> None:
    _run_scenario(loop_factory, _startup_steps, workers=2)


async def _alone_steps(_table: ConnectionTable, port: int, _event: asyncio.Event) -> None:
    first = _Request(*await asyncio.open_connection("127.0.0.1", port))
    await first.send()
    assert await first.answer() == b"ok"  # after the grace period, alone
    await first.close()


def test_a_worker_whose_siblings_never_start_accepts_after_the_grace_period(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(balance, "STARTUP_GRACE_SECONDS", 0.2)
    with caplog.at_level(logging.WARNING, logger="devhost.balance"):
        _run_scenario(None, _alone_steps, workers=2)
    assert "accepts before all 2 workers are up" in caplog.text


async def _shedding_steps(table: ConnectionTable, port: int, release: asyncio.Event) -> None:
    first = _Request(*await asyncio.open_connection("127.0.0.1", port))
    second = _Request(*await asyncio.open_connection("127.0.0.1", port))
    for request in (first, second):  # a worker alone keeps its connections open
        await request.send()
        head, _ = await request.answer_with_head()
        assert b"connection: close" not in head
    other = table.claim(os.getppid(), 10**18)
    assert other == 1
    table.publish(other, 2, busy=0)  # the other worker: two idle kept-alive connections

    # One request in flight here: answering another leaves 2 busy against 0. That response
    # closes its connection; the slow one, ending alone, does not.
    await first.send("/slow")
    await _until(lambda: table.slot(0).busy == 1)
    await second.send()
    head, _ = await second.answer_with_head()
    assert b"connection: close" in head
    release.set()
    head, _ = await first.answer_with_head()
    assert b"connection: close" not in head
    await _until(lambda: table.slot(0).connections == 1)  # the second one is closed
    await second.close()
    await first.close()


@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_a_worker_two_connections_busier_than_another_closes_the_connection_it_answers(
    loop_factory: Any,
) -> None:
    _run_scenario(loop_factory, _shedding_steps)


# --- installing it in uvicorn's supervisor --------------------------------------------------


def test_balancing_makes_the_supervisor_create_balanced_servers_until_it_closes() -> None:
    with balancing(forked=True) as balanced:
        assert balanced
        server = multiprocess.Process(uvicorn.Config(_app, log_config=None), sockets=[]).server
        assert isinstance(server, BalancedServer)
    assert multiprocess.Server is uvicorn.Server  # type: ignore[attr-defined]


def test_without_fork_the_workers_are_left_unbalanced_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="devhost.balance"), balancing(forked=False) as balanced:
        assert not balanced
        assert multiprocess.Server is uvicorn.Server  # type: ignore[attr-defined]
    assert "connections are not balanced between the worker processes" in caplog.text

"""Balancing of accepted connections between the dev host's worker processes, least busy first.

With DEVHOST_WORKERS > 1 the workers share one listening socket. Left to themselves, whichever
worker wins `accept()` gets the connection, at random; clients keep connections alive (urllib3
pools, browsers, bench/), so with 2 workers and 2 or 4 connections the split is often 2-0 or
3-1 and one core idles while the other saturates. Here each worker accepts a new connection only
while it is no busier than the least busy live worker: no more busy connections, and when those
are tied, no more open ones. A connection is busy from its accept until its first response is
complete, and again while it carries a request; between requests a kept-alive connection is
idle. Counting idle connections as load, as this did at first, let a client that keeps one it no
longer uses (a health check, an earlier phase of a benchmark) put the connections it does use on
one worker: with one idle connection on the first worker and one busy on the second, the next
went to either. The benchmark's two-client STOW of small instances ran on one worker in one or
two rounds of three.

- `ConnectionTable`: a few bytes of shared memory (a file mapping made by the parent before it
  forks, inherited by every worker, restarted ones included), one slot per worker: pid, open
  connections, busy connections, heartbeat (CLOCK_MONOTONIC, the same clock in every process).
  A worker claims a slot once its lifespan startup is done (a slot is free when its pid is 0 or
  no longer alive, so a worker that was killed and restarted leaves no stale count), under a
  POSIX record lock on the table's file, which the kernel releases if the holder dies. It gives
  the slot back when it begins its graceful shutdown. At start, a worker accepts nothing until
  every worker of the run has claimed its slot (at most `STARTUP_GRACE_SECONDS`): alone, it would
  take every connection of a client that starts as soon as /health answers.
- `may_accept`: a worker may accept while its (busy, open) counts are at most those of every
  other live slot, compared busy first. A slot is live while its pid exists and its heartbeat is
  under `STALE_NS` old: a worker that is stopped, hung, or dead but not yet reaped by the
  supervisor stops holding the others back.
- `BalancedServer`, the `uvicorn.Server` of each worker: its own accept loop on the shared socket
  instead of uvicorn's listener. Before each `accept()` (also after every wake-up: a worker that
  was allowed when it began waiting may no longer be), it checks the gate; a gated worker
  re-checks every `GATE_POLL_SECONDS`, a waiting one beats every `BEAT_SECONDS`. An accepted
  socket goes to uvicorn's HTTP protocol through `loop.connect_accepted_socket` (uvloop or
  asyncio). The counts are published on every change of the server's own set of open
  connections (a connection is added when uvicorn's protocol registers it, before the accept
  loop takes the next one, and discarded when it closes), and as each request begins and ends
  (the worker's app is wrapped to do so).

A connection stays with the worker that accepted it. A client that reuses connections made
earlier (four, two on each worker) for a load on two of them may use two on the same worker, and
no new connection comes for the gate to place. So when a worker answers a request while it has
at least `SHED_MARGIN` more busy connections than another live worker, the response carries
`Connection: close`: the client's next request comes on a new connection, which the gate places
on the less busy worker. In Azure the Functions host dispatches each invocation to a
worker process itself (over its gRPC channel), whatever connection the request came on; this
only removes the dev host's own artefact of random connection placement.

Relied on in uvicorn (0.55) beyond its documented API: `uvicorn.supervisors.multiprocess.Server`,
the name its `Multiprocess` supervisor instantiates in each worker (swapped here, as the caller
swaps `uvicorn._subprocess.spawn` for fork); `Server.startup(sockets)` / `Server.shutdown(sockets)`
with an empty socket list (lifespan only, no listener); `Server.server_state` and its
`connections` set, which every protocol adds itself to and discards itself from; the protocols'
current request cycle `cycle` and its `response_complete` flag (without them every open connection
counts as busy, which is the balancing by open connections); `Config.loaded_app`;
`Server.lifespan.state`; `Config.http_protocol_class` and its constructor keywords (`config`,
`server_state`, `app_state`), as `Server.startup` calls it. When any of these is missing, or
there is no fork, `balancing` logs it and the workers accept at random as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import mmap
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import uvicorn

try:  # POSIX; without it there is no fork either, and the dev host runs one process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BEAT_SECONDS",
    "CAPACITY",
    "GATE_POLL_SECONDS",
    "SHED_MARGIN",
    "STALE_NS",
    "STARTUP_GRACE_SECONDS",
    "BalancedServer",
    "ConnectionTable",
    "Slot",
    "balancing",
    "busy_connections",
    "may_accept",
    "pid_alive",
]

logger = logging.getLogger(__name__)

CAPACITY = 32  # slots: DEVHOST_WORKERS is at most 10; SIGTTIN can add workers beyond it
GATE_POLL_SECONDS = 0.005  # how often a gated worker looks at the table again
BEAT_SECONDS = 0.1  # how often a worker waiting for a connection refreshes its heartbeat
STARTUP_GRACE_SECONDS = 5.0  # how long a starting worker waits for its siblings before accepting
SHED_MARGIN = 2  # busy connections more than another worker's at which a response closes its own
STALE_NS = 1_000_000_000  # a slot whose heartbeat is older holds no one back
_FIELDS = 4  # per slot: pid, open connections, heartbeat (monotonic ns), busy connections
_TRANSIENT_ACCEPT_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR, errno.EAGAIN}


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (a zombie included: see `STALE_NS`)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True, slots=True)
class Slot:
    pid: int  # 0: free
    connections: int
    beat_ns: int
    busy: int = 0  # connections accepted or carrying a request (not idle between requests)


def _live(pid: int, beat_ns: int, now_ns: int, alive: Callable[[int], bool]) -> bool:
    """A slot counts when it is claimed (pid not 0), its heartbeat is fresh and its process exists.
    Callers test this last, so that the liveness system call is made only when it matters."""
    return pid != 0 and now_ns - beat_ns <= STALE_NS and alive(pid)


def may_accept(
    mine: int, others: Iterable[Slot], now_ns: int, alive: Callable[[int], bool], busy: int = 0
) -> bool:
    """The gate: True while this worker's `busy` connections, then its `mine` open ones, are no
    more than any other live worker's (compared busy first).

    Only live slots count (`_live`), asked only of slots that would gate.
    """
    load = (busy, mine)
    for slot in others:
        if (slot.busy, slot.connections) < load and _live(slot.pid, slot.beat_ns, now_ns, alive):
            return False
    return True


class ConnectionTable:
    """The slots, in a shared file mapping that forked processes inherit (see the module docstring).

    Each worker writes only its own slot; reads of the others are unlocked (a count a moment old
    only shifts one decision). Claiming a slot is done under a lock on the file.
    """

    def __init__(self, capacity: int = CAPACITY, alive: Callable[[int], bool] = pid_alive) -> None:
        self.capacity = capacity
        self._alive = alive
        # Unlinked at once; open in every worker for the life of the process.
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="devhost-balance-")  # noqa: SIM115
        self._file.truncate(capacity * _FIELDS * 8)
        self._map = mmap.mmap(self._file.fileno(), capacity * _FIELDS * 8)
        self._cells = memoryview(self._map).cast("q")

    def close(self) -> None:
        self._cells.release()
        self._map.close()
        self._file.close()

    def slot(self, index: int) -> Slot:
        base = index * _FIELDS
        cells = self._cells
        return Slot(
            pid=cells[base], connections=cells[base + 1], beat_ns=cells[base + 2], busy=cells[base + 3]
        )

    def slots(self) -> list[Slot]:
        return [self.slot(index) for index in range(self.capacity)]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover - no fork there: one process
            yield
            return
        fcntl.lockf(self._file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._file.fileno(), fcntl.LOCK_UN)

    def claim(self, pid: int, now_ns: int) -> int | None:
        """Takes a free slot for `pid` (0 open connections) and returns its index; None when full."""
        with self._locked():
            for index in range(self.capacity):
                owner = self.slot(index).pid
                if owner == 0 or (owner != pid and not self._alive(owner)):
                    base = index * _FIELDS
                    self._cells[base + 1] = 0
                    self._cells[base + 3] = 0
                    self._cells[base + 2] = now_ns
                    self._cells[base] = pid  # last: whoever sees the pid sees its fresh count
                    return index
        return None

    def release(self, index: int, pid: int) -> None:
        """Frees the slot if `pid` still holds it."""
        with self._locked():
            base = index * _FIELDS
            if self._cells[base] == pid:
                self._cells[base] = 0
                self._cells[base + 1] = 0
                self._cells[base + 3] = 0

    def publish(self, index: int, connections: int, busy: int | None = None) -> None:
        """The worker's open connections and, when given, how many of them are busy."""
        base = index * _FIELDS
        if busy is not None:
            self._cells[base + 3] = busy
        self._cells[base + 1] = connections

    def beat(self, index: int, now_ns: int) -> None:
        self._cells[index * _FIELDS + 2] = now_ns

    def live_workers(self, now_ns: int) -> int:
        """How many slots are claimed by a worker with a fresh heartbeat that is alive."""
        return sum(1 for slot in self.slots() if _live(slot.pid, slot.beat_ns, now_ns, self._alive))

    def has_less_busy(self, index: int, busy: int, now_ns: int) -> bool:
        """Whether another live worker has fewer than `busy` busy connections (read from the cells
        directly: it is asked at every response that could close its connection)."""
        cells = self._cells
        for other in range(self.capacity):
            base = other * _FIELDS
            if (
                other != index
                and cells[base + 3] < busy
                and _live(cells[base], cells[base + 2], now_ns, self._alive)
            ):
                return True
        return False

    def may_accept(self, index: int, now_ns: int) -> bool:
        cells = self._cells
        base = index * _FIELDS
        others = (
            self.slot(other) for other in range(self.capacity) if other != index and cells[other * _FIELDS]
        )
        return may_accept(cells[base + 1], others, now_ns, self._alive, busy=cells[base + 3])


class _CountedConnections(set[Any]):
    """`ServerState.connections` that reports its size on every change."""

    def __init__(self, report: Callable[[int], None]) -> None:
        super().__init__()
        self._report = report

    def add(self, element: Any) -> None:
        super().add(element)
        self._report(len(self))

    def discard(self, element: Any) -> None:
        super().discard(element)
        self._report(len(self))

    def remove(self, element: Any) -> None:
        super().remove(element)
        self._report(len(self))


def _idle(protocol: Any) -> bool:
    """A kept-alive connection between requests: uvicorn's protocol keeps its current request cycle
    as `cycle` (None before the first request), whose `response_complete` turns True once the
    response is sent; a new request replaces the cycle. Anything else counts as busy."""
    cycle = getattr(protocol, "cycle", None)
    return cycle is not None and getattr(cycle, "response_complete", False) is True


def busy_connections(connections: Iterable[Any]) -> int:
    return sum(1 for protocol in connections if not _idle(protocol))


_CLOSE = (b"connection", b"close")


class _ReportingRequests:
    """The worker's ASGI app, calling `report` as each HTTP request begins and once it has ended,
    and closing the connection after a response when `shed` says this worker is too busy."""

    def __init__(self, app: Any, report: Callable[[], None], shed: Callable[[], bool]) -> None:
        self.app = app
        self._report = report
        self._shed = shed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def shedding_send(message: Any) -> None:
            if message["type"] == "http.response.start" and self._shed():
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        self._report()
        try:
            await self.app(scope, receive, shedding_send)
        finally:
            self._report()


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
    """Returns when `sock` is readable (a connection is pending) or after `timeout` seconds."""
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        loop.remove_reader(fd)


class BalancedServer(uvicorn.Server):
    """A worker's uvicorn server that accepts on the shared socket through the table's gate."""

    def __init__(self, config: uvicorn.Config, table: ConnectionTable) -> None:
        super().__init__(config)
        self.table = table
        self.slot: int | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self.server_state.connections = _CountedConnections(self._report)

    def _report(self, connections: int) -> None:
        if self.slot is not None:
            self.table.publish(self.slot, connections, busy_connections(self.server_state.connections))

    def _report_now(self) -> None:
        self._report(len(self.server_state.connections))

    def _shed(self) -> bool:
        """True when this worker has at least SHED_MARGIN more busy connections than another live
        worker: the response being sent then closes its connection (see the module docstring)."""
        if self.slot is None:
            return False
        mine = busy_connections(self.server_state.connections)
        return mine >= SHED_MARGIN and self.table.has_less_busy(
            self.slot, mine - SHED_MARGIN + 1, time.monotonic_ns()
        )

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not sockets:  # nothing shared to accept on: uvicorn's own listener
            await super().startup(sockets=sockets)
            return
        await super().startup(sockets=[])  # the lifespan, and no listener of uvicorn's
        if not self.started:
            return
        # Protocols take the app when they are made: wrapped before the first connection.
        self.config.loaded_app = _ReportingRequests(self.config.loaded_app, self._report_now, self._shed)
        pid = os.getpid()
        self.slot = self.table.claim(pid, time.monotonic_ns())
        if self.slot is None:
            logger.warning("worker %d: the balancing table is full; it accepts unbalanced", pid)
        else:
            self._report_now()
            logger.info("worker %d accepts connections (least-connections, slot %d)", pid, self.slot)
        self._acceptor = asyncio.create_task(self._accept_loop(sockets[0]))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        if self.slot is not None:  # its open connections no longer hold the others back
            self.table.release(self.slot, os.getpid())
            self.slot = None
        await super().shutdown(sockets=sockets)

    def _protocol(self) -> asyncio.Protocol:
        """What uvicorn's own listener would create for a connection (see `Server.startup`)."""
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    async def _wait_for_siblings(self) -> None:
        """At start, the connections wait in the backlog until every worker of the run is up (at
        most STARTUP_GRACE_SECONDS): a worker accepting alone would take all the first ones, and
        a client that opens its connections at once (a benchmark started as soon as /health
        answers) would keep them all on it. A worker restarted later finds the others up."""
        if self.slot is None:
            return
        expected = int(self.config.workers or 1)
        deadline = time.monotonic() + STARTUP_GRACE_SECONDS
        while time.monotonic() < deadline:
            now = time.monotonic_ns()
            self.table.beat(self.slot, now)
            if self.table.live_workers(now) >= expected:
                return
            await asyncio.sleep(GATE_POLL_SECONDS)
        logger.warning("worker %d accepts before all %d workers are up", os.getpid(), expected)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        await self._wait_for_siblings()
        while True:
            if self.slot is not None:
                now = time.monotonic_ns()
                self.table.beat(self.slot, now)
                if not self.table.may_accept(self.slot, now):
                    await asyncio.sleep(GATE_POLL_SECONDS)
                    continue
            try:
                connection, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                await _readable(loop, listener, BEAT_SECONDS)
                continue  # the gate again: the counts may have changed while waiting
            except OSError as error:
                if error.errno in _TRANSIENT_ACCEPT_ERRORS:
                    continue
                logger.error("accept failed (%s); trying again in 1 s", error)  # EMFILE, ENOBUFS...
                await asyncio.sleep(1.0)
                continue
            await self._connect(loop, connection)

    async def _connect(self, loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
        """Hands the socket to the HTTP protocol; returns once the connection is registered (counted)."""
        connection.setblocking(False)
        try:
            await loop.connect_accepted_socket(self._protocol, connection, ssl=self.config.ssl)
        except asyncio.CancelledError:
            connection.close()
            raise
        except Exception:
            logger.exception("could not set up an accepted connection")
            connection.close()


def _unsupported(forked: bool) -> str | None:
    if not forked or not hasattr(os, "fork"):
        return "the workers are not forked"
    if fcntl is None:  # pragma: no cover - no fork there either
        return "no fcntl"
    from uvicorn.supervisors import multiprocess

    if getattr(multiprocess, "Server", None) is not uvicorn.Server:
        return "this uvicorn's supervisor does not create uvicorn.Server by that name"
    from uvicorn.server import ServerState

    if not isinstance(getattr(ServerState(), "connections", None), set):
        return "this uvicorn's ServerState has no connections set"
    return None


@contextlib.contextmanager
def balancing(*, forked: bool) -> Iterator[bool]:
    """While open, uvicorn's `Multiprocess` supervisor runs a `BalancedServer` in each worker it
    starts (restarts included), all sharing one table. Yields False, after a log line, when the
    balancing cannot work here (no fork, or a uvicorn without the attributes it relies on): the
    workers then accept connections at random, as uvicorn's do.
    """
    reason = _unsupported(forked)
    if reason is not None:
        logger.warning("connections are not balanced between the worker processes: %s", reason)
        yield False
        return
    from uvicorn.supervisors import multiprocess

    table = ConnectionTable()
    original = multiprocess.Server  # type: ignore[attr-defined]
    multiprocess.Server = functools.partial(BalancedServer, table=table)  # type: ignore[attr-defined,assignment]
    try:
        yield True
    finally:
        multiprocess.Server = original  # type: ignore[attr-defined]
        table.close()

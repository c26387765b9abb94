"""Streaming a blocking byte iterator (blob reads) to an ASGI response with few thread hops.

Starlette's StreamingResponse runs a sync iterator one `next()` per worker-thread hop. Here one
hop takes chunks until a budget of bytes is reached, and the next batch is read while the event loop
sends the current one, so reading and sending overlap. At most two batches are held: memory stays
bounded by about twice the budget whatever the size of what is streamed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from starlette.concurrency import run_in_threadpool

BATCH_BYTES = 4 * 1024 * 1024


def _take(chunks: Iterator[bytes], budget: int) -> list[bytes]:
    batch: list[bytes] = []
    size = 0
    for chunk in chunks:
        if chunk:
            batch.append(chunk)
            size += len(chunk)
            if size >= budget:
                break
    return batch


async def prefetched(chunks: Iterator[bytes], budget: int = BATCH_BYTES) -> AsyncIterator[bytes]:
    """Yield the chunks of `chunks`, read in batches of about `budget` bytes in a worker thread,
    one batch ahead of what is being sent.

    The iterator is always closed (its `finally` blocks run, files close), also when the client
    goes away mid-stream; a read that is under way then completes before it is closed.
    """

    def read_ahead() -> asyncio.Future[list[bytes]]:
        return asyncio.ensure_future(run_in_threadpool(_take, chunks, budget))

    ahead: asyncio.Future[list[bytes]] | None = read_ahead()
    try:
        while ahead is not None:
            batch = await ahead
            ahead = read_ahead() if batch else None
            for chunk in batch:
                yield chunk
    finally:
        if ahead is not None:
            # A thread cannot be interrupted: wait for its read, then close the iterator.
            await asyncio.shield(asyncio.wait([ahead]))
            if not ahead.cancelled():
                ahead.exception()  # retrieved: an error here is not the one being reported
        close = getattr(chunks, "close", None)
        if close is not None:
            await run_in_threadpool(close)

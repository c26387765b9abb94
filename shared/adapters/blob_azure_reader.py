"""A readable, seekable file object over one Azure blob, downloaded in chunks as it is read.

Reading front to back streams the blob: one ranged GET per chunk (the client's
`max_chunk_get_size`), one chunk in memory at a time. Seeking is allowed because pydicom needs it
(`dcmread`, frame walks, transcoding): a seek inside the chunk in hand costs nothing, a short
forward seek reads on through the current download, and any other seek starts a new ranged
download at the target. Every range after the first is pinned to the ETag seen at open, so a
reader never mixes two versions of a blob.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from azure.core import MatchConditions
from azure.storage.blob import BlobClient

from shared.adapters.blob_azure_errors import UNAVAILABLE, Action, translated
from shared.core.errors import Unavailable


class AzureBlobReader(io.RawIOBase):
    """The blob `blob`, opened for reading (the first chunk is fetched here: NotFound if missing).

    `read(n)` returns exactly n bytes unless the end comes first, as a file does (pydicom relies on
    it). `skip_limit` is how far ahead a seek may be served by reading on through the current
    download rather than by starting a new one."""

    def __init__(self, blob: BlobClient, *, skip_limit: int) -> None:
        super().__init__()
        self._blob = blob
        self._skip_limit = skip_limit
        with translated(Action.READ):
            downloader = blob.download_blob(max_concurrency=1)
        self._size: int = downloader.size
        self._etag: str | None = downloader.properties.etag
        self._chunks: Iterator[bytes] | None = iter(downloader.chunks())
        self._next = 0  # where the next chunk of `_chunks` starts in the blob
        self._chunk = b""
        self._chunk_start = 0
        self._position = 0

    @property
    def size(self) -> int:
        """The size of the blob, in bytes."""
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if target < 0:
            raise ValueError("negative seek position")
        self._position = target
        return target

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._position < self._size:
            at = self._position - self._chunk_start
            if not 0 <= at < len(self._chunk):
                self._load_chunk()
                continue
            count = min(len(view) - filled, len(self._chunk) - at)
            view[filled : filled + count] = self._chunk[at : at + count]
            filled += count
            self._position += count
        return filled

    def readall(self) -> bytes:
        self._check_open()
        buffer = bytearray(max(self._size - self._position, 0))
        return bytes(buffer[: self.readinto(buffer)])

    def close(self) -> None:
        self._chunks = None
        self._chunk = b""
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _load_chunk(self) -> None:
        """Make the chunk that holds `_position` the chunk in hand."""
        if self._chunks is None or not self._next <= self._position < self._next + self._skip_limit:
            self._restart(self._position)
        assert self._chunks is not None
        while True:
            with translated(Action.READ):
                chunk = next(self._chunks, None)
            if not chunk:  # the blob ended before the size it had at open
                raise Unavailable(UNAVAILABLE)
            self._chunk, self._chunk_start = chunk, self._next
            self._next += len(chunk)
            if self._position < self._next:
                return

    def _restart(self, offset: int) -> None:
        self._chunks, self._chunk = None, b""  # let the old download go before the new one comes
        pinned: dict[str, Any] = {}
        if self._etag:
            pinned = {"etag": self._etag, "match_condition": MatchConditions.IfNotModified}
        with translated(Action.READ):
            downloader = self._blob.download_blob(
                offset=offset, length=self._size - offset, max_concurrency=1, **pinned
            )
            self._chunks = iter(downloader.chunks())
        self._next = offset

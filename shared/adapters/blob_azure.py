"""BlobStore on Azure Blob Storage (azure-storage-blob, sync API); Azurite in tests.

- Create-only writes carry `If-None-Match: *`, so of two concurrent writers of one name exactly
  one wins and the other gets Conflict. A write larger than one block is staged in blocks whose
  ids are unique to that write (a concurrent writer of the same name cannot mix its blocks into
  ours) and made visible at once by the block-list commit; memory stays within a few blocks.
- Reads stream in chunks through a seekable file object (`AzureBlobReader`).
- SDK errors become the core's errors here (`blob_azure_errors`), after the SDK's own retries.
- Nothing connects at construction; the container is created on first use when allowed.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO, cast

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobClient, ContainerClient, ExponentialRetry

from shared.adapters.blob_azure_errors import Action, release, translated
from shared.adapters.blob_azure_reader import AzureBlobReader
from shared.core.errors import BadRequest, NotFound

log = logging.getLogger(__name__)

MB = 1024 * 1024
BLOCK_SIZE = 4 * MB
"""Upload block and download chunk size: what one request carries and one buffer holds."""
MAX_CONCURRENCY = 4
"""Blocks of one write staged at the same time (memory: about this many blocks)."""
MAX_NAME = 1024


class StorageRetry(ExponentialRetry):
    """The SDK's exponential retry, which also releases the connection of a response it retries.

    (The SDK drops a streamed download's response without closing it when it retries, so its
    socket stays open until the garbage collector finds it.)"""

    def increment(self, settings: Any, request: Any, response: Any = None, error: Any = None) -> bool:
        again: bool = super().increment(settings, request, response=response, error=error)
        if again:
            release(response)
        return again


def client_options(retry_total: int = 3, block_size: int = BLOCK_SIZE, **overrides: Any) -> dict[str, Any]:
    """Settings for the SDK client: transfer sizes (`block_size`), timeouts and the retry policy.

    The retry policy is the SDK's exponential one (about 1 s, 3 s, 5 s with jitter) instead of its
    default, which waits 15 s and more between tries: longer than an HTTP client waits. Any SDK
    keyword in `overrides` wins (for example `retry_policy` or `transport`)."""
    options: dict[str, Any] = {
        "retry_policy": StorageRetry(
            initial_backoff=1, increment_base=2, retry_total=retry_total, random_jitter_range=1
        ),
        "connection_timeout": 10,
        "read_timeout": 60,
        "max_single_put_size": block_size,
        "max_block_size": block_size,
        "max_single_get_size": block_size,
        "max_chunk_get_size": block_size,
    }
    options.update(overrides)
    return options


def _check_name(key: str) -> str:
    parts = key.split("/")
    if not key or len(key) > MAX_NAME or any(part in ("", ".", "..") for part in parts):
        raise BadRequest("invalid blob name")
    return key


def _read_block(data: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes of `data`, fewer only at its end (a raw stream may return short reads)."""
    first = data.read(size)
    if not first or len(first) == size:
        return first or b""
    parts = [first]
    got = len(first)
    while got < size and (more := data.read(size - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class AzureBlobStore:
    """The BlobStore port over one container of an Azure Storage account."""

    def __init__(
        self,
        container: ContainerClient,
        *,
        create_container: bool = True,
        block_size: int = BLOCK_SIZE,
        max_concurrency: int = MAX_CONCURRENCY,
    ) -> None:
        self._container = container
        self._block_size = block_size
        self._max_concurrency = max(1, max_concurrency)
        self._ready = not create_container
        self._ready_lock = threading.Lock()

    @classmethod
    def from_connection_string(
        cls,
        conn: str,
        container: str,
        *,
        create_container: bool = True,
        retry_total: int = 3,
        block_size: int = BLOCK_SIZE,
        **sdk_options: Any,
    ) -> AzureBlobStore:
        """A store on `container` of the account in `conn`: an Azure Storage connection string
        (`AzureWebJobsStorage`, Azurite's, or `UseDevelopmentStorage=true`)."""
        client = ContainerClient.from_connection_string(
            conn, container, **client_options(retry_total, block_size, **sdk_options)
        )
        return cls(client, create_container=create_container, block_size=block_size)

    @classmethod
    def from_account_url(
        cls,
        account_url: str,
        container: str,
        *,
        credential: Any = None,
        create_container: bool = True,
        retry_total: int = 3,
        block_size: int = BLOCK_SIZE,
        **sdk_options: Any,
    ) -> AzureBlobStore:
        """A store on `container` at `account_url` (`https://<account>.blob.core.windows.net`).

        `credential` None means `DefaultAzureCredential()` (a managed identity in Azure, the
        developer's login elsewhere); any credential the SDK takes is accepted (a token credential,
        an account key, a SAS)."""
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        client = ContainerClient(
            account_url,
            container,
            credential=credential,
            **client_options(retry_total, block_size, **sdk_options),
        )
        return cls(client, create_container=create_container, block_size=block_size)

    # --- BlobStore ---------------------------------------------------------------------------
    def put(self, key: str, data: BinaryIO, *, overwrite: bool = False) -> int:
        blob = self._blob(key)
        first = _read_block(data, self._block_size)
        if len(first) < self._block_size:  # all of it: one request
            with translated(Action.WRITE):
                blob.upload_blob(first, length=len(first), **self._condition(overwrite))
            return len(first)
        return self._put_blocks(blob, first, data, overwrite)

    def open(self, key: str) -> BinaryIO:
        reader = AzureBlobReader(self._blob(key), skip_limit=2 * self._block_size)
        return cast(BinaryIO, reader)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise BadRequest("invalid byte range")
        blob = self._blob(key)
        with translated(Action.READ):
            if length == 0:
                blob.get_blob_properties()  # NotFound when missing, as for any other length
                return b""
            data = blob.download_blob(offset=offset, length=length, max_concurrency=1).readall()
        if len(data) != length:
            raise NotFound("the stored file is shorter than its index says")
        return data

    def delete(self, key: str) -> None:
        blob = self._blob(key)
        # a missing blob, or container, is already gone: not an error
        with translated(Action.READ), contextlib.suppress(ResourceNotFoundError):
            blob.delete_blob(delete_snapshots="include")

    def list(self, prefix: str = "") -> Iterator[str]:
        self._ensure_container()
        with translated(Action.READ):
            try:
                yield from self._container.list_blob_names(name_starts_with=prefix or None)
            except ResourceNotFoundError:  # no container: nothing stored
                return

    # --- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the HTTP connections (the store is not used after this)."""
        self._container.close()

    # --- internals ---------------------------------------------------------------------------
    def _blob(self, key: str) -> BlobClient:
        name = _check_name(key)
        self._ensure_container()
        return self._container.get_blob_client(name)

    def _ensure_container(self) -> None:
        """Create the container once, on first use (thread-safe; a failure is retried next time)."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            with translated(Action.WRITE):
                try:
                    self._container.create_container()
                    log.info("created the blob container")
                except ResourceExistsError:
                    pass
                except HttpResponseError as error:
                    if error.status_code != 403:
                        raise
                    # An identity with a role on the container only may not create it: use it as it is.
                    log.warning("not allowed to create the blob container; assuming it exists")
            self._ready = True

    @staticmethod
    def _condition(overwrite: bool) -> dict[str, Any]:
        """Create-only is `If-None-Match: *`; a replace is unconditional."""
        if overwrite:
            return {"overwrite": True}
        return {"match_condition": MatchConditions.IfMissing}

    def _put_blocks(self, blob: BlobClient, first: bytes, data: BinaryIO, overwrite: bool) -> int:
        """Stage `first` and the rest of `data` as blocks, a few at a time, then commit them."""
        write_id = uuid.uuid4().hex  # unique per write: blocks of a concurrent writer never mix in
        block_ids: list[str] = []
        size = 0
        pool = ThreadPoolExecutor(self._max_concurrency, thread_name_prefix="blob-put")
        in_flight: set[Future[None]] = set()
        try:
            block = first
            while block:
                block_id = base64.b64encode(f"{write_id}-{len(block_ids):08d}".encode()).decode()
                block_ids.append(block_id)
                in_flight.add(pool.submit(self._stage, blob, block_id, block))
                size += len(block)
                del block
                if len(in_flight) >= self._max_concurrency:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                block = _read_block(data, self._block_size)
            for future in in_flight:
                future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        with translated(Action.WRITE):
            blob.commit_block_list([BlobBlock(block_id) for block_id in block_ids], **self._commit(overwrite))
        log.debug("committed a blob of %s bytes in %s blocks", size, len(block_ids))
        return size

    @staticmethod
    def _commit(overwrite: bool) -> dict[str, Any]:
        return {} if overwrite else {"match_condition": MatchConditions.IfMissing}

    @staticmethod
    def _stage(blob: BlobClient, block_id: str, block: bytes) -> None:
        with translated(Action.WRITE):
            blob.stage_block(block_id, block, length=len(block))

    def __repr__(self) -> str:
        return f"AzureBlobStore(container={self._container.container_name!r})"

"""The Azure Table Storage plumbing of the Table index: tables, keys, big JSON values, SDK errors.

Everything that crosses into azure-data-tables goes through `Tables`: plain str/int values only,
filters always parameterised (`@name`, which the SDK quotes and escapes by doubling single quotes)
and keys always built by `key()`, so neither UIDs nor user input can change a filter or a key.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.core.errors import Conflict, PayloadTooLarge, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Entity = dict[str, Any]

# Characters kept as they are in a key: printable ASCII except the ones Table keys forbid (/ \ # ?),
# the escape character (!) and the two characters the key ranges are built from (| separates the
# parts of a key, ~ closes a prefix range). Everything else becomes !XXXXXX (its code point).
_SAFE = frozenset(chr(c) for c in range(0x20, 0x7E)) - set("/\\#?!|~")
MAX_KEY_VALUE = 400  # characters of an encoded value in a key (Table keys may hold 1 KiB)
SEP = "|"
END = "~"  # sorts after every character a key can hold: `lo + END` closes a prefix range

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,49}")
CHUNK = 30_000  # characters of ASCII JSON per property (a string property holds 64 KiB as UTF-16)
MAX_CHUNKS = 15  # 900 KB as UTF-16: an entity holds at most 1 MiB
BATCH_LIMIT = 100  # operations of one entity group transaction
_RETRYABLE_BATCH = {"UpdateConditionNotSatisfied", "EntityAlreadyExists", "ResourceNotFound"}


def key(value: str, limit: int = MAX_KEY_VALUE) -> str:
    """`value` as a key part: only safe ASCII, order of shared prefixes kept, cut at `limit`."""
    out: list[str] = []
    size = 0
    for char in value:
        part = char if char in _SAFE else f"!{ord(char):06X}"
        if size + len(part) > limit:
            break
        out.append(part)
        size += len(part)
    return "".join(out)


def is_cut(value: str, limit: int = MAX_KEY_VALUE) -> bool:
    """True if `key(value)` lost characters (lookups then use it as a prefix and filter after)."""
    return len(key(value, limit + 8)) > limit


def check_name(name: str, what: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise ValueError(f"{what} must be a letter followed by up to 49 letters or digits")
    return name


def dump_json(entity: Entity, prefix: str, value: Any) -> None:
    """Store `value` as JSON in properties `prefix0`, `prefix1`, ... (ASCII, CHUNK characters each)."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    chunks = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    if len(chunks) > MAX_CHUNKS:
        raise PayloadTooLarge("the instance's indexed attributes are too large for the index")
    entity[f"{prefix}n"] = len(chunks)
    for index, chunk in enumerate(chunks):
        entity[f"{prefix}{index}"] = chunk


def load_json(entity: Entity, prefix: str, default: Any = None) -> Any:
    count = entity.get(f"{prefix}n")
    if not count:
        return default
    return json.loads("".join(entity[f"{prefix}{index}"] for index in range(int(count))))


def json_props(prefix: str) -> list[str]:
    """Property names of a chunked JSON value, for a `select`."""
    return [f"{prefix}n", *(f"{prefix}{index}" for index in range(MAX_CHUNKS))]


def plain(entity: Any) -> Entity:
    """An SDK entity as a dict, with its ETag under "etag"."""
    out = dict(entity)
    out["etag"] = entity.metadata.get("etag") if hasattr(entity, "metadata") else None
    return out


def _clean(entity: Entity) -> Entity:
    return {k: v for k, v in entity.items() if k != "etag" and v is not None}


def _with_keys(select: list[str] | None) -> list[str] | None:
    return None if select is None else ["PartitionKey", "RowKey", *select]


@contextmanager
def translated() -> Iterator[None]:
    """SDK errors -> core errors (after the SDK's own retry policy has run its course)."""
    try:
        yield
    except (ResourceExistsError, ResourceModifiedError) as exc:
        raise Conflict("the index entry was changed by another request") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        log.warning("table index unreachable: %s", type(exc).__name__)
        raise Unavailable("the index is unavailable; retry later") from exc
    except HttpResponseError as exc:
        if exc.status_code == 412:
            raise Conflict("the index entry was changed by another request") from exc
        if exc.status_code in (408, 429, 500, 502, 503, 504) or exc.status_code is None:
            log.warning("table index error: status %s", exc.status_code)
            raise Unavailable("the index is unavailable; retry later") from exc
        raise
    except AzureError as exc:
        raise Unavailable("the index is unavailable; retry later") from exc


class Tables:
    """The four tables of one index (created on first use) and a small thread pool."""

    STUDIES, UIDS, KEYS, CHANGES = "Studies", "Uids", "Keys", "Changes"

    def __init__(self, service: Callable[[], TableServiceClient], prefix: str) -> None:
        self._make_service = service
        self._prefix = check_name(prefix, "the table prefix")
        self._clients: dict[str, TableClient] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def client(self, name: str) -> TableClient:
        clients = self._clients
        if not clients:
            with self._lock:
                if not self._clients:
                    self._clients = self._connect()
            clients = self._clients
        return clients[name]

    def _connect(self) -> dict[str, TableClient]:
        service = self._make_service()
        clients = {}
        with translated():
            for name in (self.STUDIES, self.UIDS, self.KEYS, self.CHANGES):
                clients[name] = service.create_table_if_not_exists(f"{self._prefix}{name}")
        return clients

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`fn` over `items` in parallel (I/O bound point reads and writes), results in order."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(16, thread_name_prefix="table-index")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for client in self._clients.values():
            client.close()

    # --- reads ---------------------------------------------------------------------------------
    def get(self, table: str, pk: str, rk: str, select: list[str] | None = None) -> Entity | None:
        with translated():
            try:
                found = plain(self.client(table).get_entity(pk, rk, select=_with_keys(select)))
            except ResourceNotFoundError:
                return None
        return found

    def query(
        self,
        table: str,
        pk: str,
        lo: str | None = None,
        hi: str | None = None,
        *,
        select: list[str] | None = None,
        page: int = 1000,
        equal: dict[str, Any] | None = None,
        at_least: dict[str, str] | None = None,
    ) -> Iterator[Entity]:
        """The rows of partition `pk` with `lo <= RowKey < hi`, in RowKey order, page by page; the
        service also checks `prop eq value` for `equal` and `prop ge value` for `at_least`."""
        where = ["PartitionKey eq @pk"]
        params: dict[str, Any] = {"pk": pk}
        for op, conditions in (("eq", equal or {}), ("ge", at_least or {})):
            for n, (prop, value) in enumerate(conditions.items()):
                check_name(prop, "a property name")
                where.append(f"{prop} {op} @{op}{n}")
                params[f"{op}{n}"] = value
        if lo is not None:
            where.append("RowKey ge @lo")
            params["lo"] = lo
        if hi is not None:
            where.append("RowKey lt @hi")
            params["hi"] = hi
        with translated():
            rows = self.client(table).query_entities(
                " and ".join(where), parameters=params, select=_with_keys(select), results_per_page=page
            )
            for row in rows:
                yield plain(row)

    def prefix(self, table: str, pk: str, start: str, **kw: Any) -> Iterator[Entity]:
        """The rows whose RowKey starts with `start`."""
        return self.query(table, pk, start, start + END, **kw)

    # --- writes --------------------------------------------------------------------------------
    def create(self, table: str, entity: Entity) -> bool:
        """Insert; False if the row exists."""
        with translated():
            try:
                self.client(table).create_entity(_clean(entity))
                return True
            except ResourceExistsError:
                return False

    def merge(self, table: str, entity: Entity, etag: str | None) -> bool:
        """Set the properties of `entity` (the others stay) if the row still has `etag`; False if
        it changed or went away."""
        with translated():
            try:
                self.client(table).update_entity(
                    entity,
                    mode=UpdateMode.MERGE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
                return True
            except (ResourceModifiedError, ResourceNotFoundError):
                return False
            except HttpResponseError as exc:
                if exc.status_code == 412:
                    return False
                raise

    def upsert(self, table: str, entity: Entity) -> None:
        with translated():
            self.client(table).upsert_entity(_clean(entity), mode=UpdateMode.REPLACE)

    def delete(self, table: str, pk: str, rk: str, etag: str | None = None) -> bool:
        """Delete (if it still has `etag`, when given); False if it changed. Missing is no error."""
        with translated():
            try:
                if etag is None:
                    self.client(table).delete_entity(pk, rk)
                else:
                    self.client(table).delete_entity(
                        pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
                return True
            except ResourceNotFoundError:
                return etag is None
            except (ResourceModifiedError, HttpResponseError) as exc:
                if getattr(exc, "status_code", None) == 412 or isinstance(exc, ResourceModifiedError):
                    return False
                raise

    def transact(self, table: str, operations: list[tuple[Any, ...]]) -> list[str | None] | None:
        """One entity group transaction (one partition, at most 100 operations). Returns the new
        ETags, or None if a condition failed (a row changed, appeared or went away meanwhile)."""
        if len(operations) > BATCH_LIMIT:
            raise ValueError("a transaction holds at most 100 operations")
        with translated():
            try:
                results = self.client(table).submit_transaction(operations)
            except TableTransactionError as exc:
                if getattr(exc, "error_code", None) in _RETRYABLE_BATCH or exc.status_code in (404, 409, 412):
                    return None
                raise
        return [result.get("etag") for result in results]

    def write_all(self, table: str, upserts: Iterable[Entity], deletes: Iterable[tuple[str, str]]) -> None:
        """Upsert and delete rows (no conditions), grouped by partition into transactions."""
        by_partition: dict[str, list[tuple[Any, ...]]] = {}
        for pk, rk in deletes:
            by_partition.setdefault(pk, []).append(("delete", {"PartitionKey": pk, "RowKey": rk}))
        for entity in upserts:
            by_partition.setdefault(entity["PartitionKey"], []).append(
                ("upsert", _clean(entity), {"mode": UpdateMode.REPLACE})
            )
        batches = [
            ops[i : i + BATCH_LIMIT] for ops in by_partition.values() for i in range(0, len(ops), BATCH_LIMIT)
        ]
        self.map(
            lambda ops: self._write_batch(table, ops) if len(ops) > 1 else self._write_one(table, ops[0]),
            batches,
        )

    def _write_one(self, table: str, op: tuple[Any, ...]) -> None:
        if op[0] == "delete":
            self.delete(table, op[1]["PartitionKey"], op[1]["RowKey"])
        else:
            self.upsert(table, op[1])

    def _write_batch(self, table: str, ops: list[tuple[Any, ...]]) -> None:
        with translated():
            try:
                self.client(table).submit_transaction(ops)
            except TableTransactionError as exc:
                if getattr(exc, "error_code", None) != "ResourceNotFound" and exc.status_code != 404:
                    raise
                # A row to delete is already gone: write them one by one.
                for op in ops:
                    self._write_one(table, op)


def replace_op(entity: Entity, etag: str | None) -> tuple[Any, ...]:
    """A transaction operation: replace the row if unchanged (`etag`), or create it (None)."""
    if etag is None:
        return ("create", _clean(entity))
    return (
        "update",
        _clean(entity),
        {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified},
    )


def delete_op(pk: str, rk: str, etag: str | None) -> tuple[Any, ...]:
    kwargs: dict[str, Any] = {}
    if etag is not None:
        kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
    return ("delete", {"PartitionKey": pk, "RowKey": rk}, kwargs)

"""Adapter factories for the contract suites: every test here runs over every adapter listed below.

A factory is a context manager that takes a fresh working folder and yields `connect`, a callable
that returns a new client of one and the same store (tests that model several function instances
call it once per worker). Leaving the context releases what the factory made (engines, containers).

To add an adapter, add one `Backend("name", factory)` to `BLOB_STORES` or `INDEXES`. A factory
that needs a service gets it from `tests.services` (`azurite()`, `fresh_postgres_database()`: they
skip, or fail under CI, when it is missing) and gives every test its own container / database /
table so tests stay independent. Known, reported differences of an index from the reference
matcher are listed per backend name in test_metadata_index_search.KNOWN_DIFFERENCES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from sqlalchemy import Engine

from shared.adapters.blob_filesystem import FileSystemBlobStore
from shared.adapters.index_sql import SqlMetadataIndex
from shared.adapters.index_sql_schema import make_engine
from shared.core.ports import BlobStore, MetadataIndex

ConnectBlobStore = Callable[[], BlobStore]
ConnectIndex = Callable[[], MetadataIndex]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backend(Generic[T]):
    """One adapter under test: its name (the test id) and its factory."""

    name: str
    open: Callable[[Path], AbstractContextManager[Callable[[], T]]]


@dataclass(frozen=True, slots=True)
class NamedIndex:
    """A module-scoped index: the backend's name (for known, reported differences) and `connect`."""

    name: str
    connect: ConnectIndex


@contextmanager
def filesystem_blob_store(workdir: Path) -> Iterator[ConnectBlobStore]:
    root = workdir / "blobs"
    yield lambda: FileSystemBlobStore(root)


@contextmanager
def filesystem_named_blob_store(workdir: Path) -> Iterator[ConnectBlobStore]:
    """The filesystem store's portable write path (`.tmp-*` files), taken where O_TMPFILE is missing."""
    root = workdir / "blobs"
    yield lambda: FileSystemBlobStore(root, unnamed_files=False)


@contextmanager
def _sql_index(url: str) -> Iterator[ConnectIndex]:
    """Clients of one SQL database, each with its own engine (as separate function hosts would)."""
    engines: list[Engine] = []

    def connect() -> MetadataIndex:
        engines.append(make_engine(url))
        return SqlMetadataIndex(url, engine=engines[-1])

    try:
        yield connect
    finally:
        for engine in engines:
            engine.dispose()


def sqlite_index(workdir: Path) -> AbstractContextManager[ConnectIndex]:
    return _sql_index(f"sqlite:///{workdir}/i.sqlite3")


def postgresql_index(workdir: Path) -> AbstractContextManager[ConnectIndex]:
    """A fresh PostgreSQL database per test (tests.services starts a server when none is given)."""
    from tests.services import fresh_postgres_database

    return _sql_index(fresh_postgres_database())


@contextmanager
def azurite_table_index(workdir: Path) -> Iterator[ConnectIndex]:
    """Fresh tables (a new prefix) on Azurite for every test; dropped afterwards."""
    import uuid

    from azure.data.tables import TableServiceClient

    from shared.adapters.index_table import TableMetadataIndex
    from tests.services import azurite

    conn, prefix = azurite(), f"t{uuid.uuid4().hex[:16]}"
    indexes: list[TableMetadataIndex] = []

    def connect() -> MetadataIndex:
        indexes.append(TableMetadataIndex.from_connection_string(conn, prefix=prefix))
        return indexes[-1]

    try:
        yield connect
    finally:
        for index in indexes:
            index.close()
        with TableServiceClient.from_connection_string(conn) as service:
            for name in ("Studies", "Uids", "Keys", "Changes"):
                service.delete_table(prefix + name)


@contextmanager
def azurite_blob_store(workdir: Path) -> Iterator[ConnectBlobStore]:
    """A fresh container on Azurite for every test (made on first use); deleted afterwards."""
    import uuid

    from azure.storage.blob import BlobServiceClient

    from shared.adapters.blob_azure import AzureBlobStore
    from tests.services import azurite

    conn, container = azurite(), f"t{uuid.uuid4().hex}"
    stores: list[AzureBlobStore] = []

    def connect() -> BlobStore:
        stores.append(AzureBlobStore.from_connection_string(conn, container))
        return stores[-1]

    try:
        yield connect
    finally:
        for store in stores:
            store.close()
        with BlobServiceClient.from_connection_string(conn) as service:
            if service.get_container_client(container).exists():
                service.delete_container(container)


BLOB_STORES: list[Backend[BlobStore]] = [
    Backend("filesystem", filesystem_blob_store),
    Backend("filesystem-named", filesystem_named_blob_store),
    Backend("azurite", azurite_blob_store),
]
INDEXES: list[Backend[MetadataIndex]] = [
    Backend("sqlite", sqlite_index),
    Backend("postgresql", postgresql_index),
    Backend("azurite-table", azurite_table_index),
]


def _params(backends: Sequence[Backend[Any]]) -> list[Any]:
    return [pytest.param(backend, id=backend.name) for backend in backends]


@pytest.fixture(params=_params(BLOB_STORES))
def connect_blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConnectBlobStore]:
    backend: Backend[BlobStore] = request.param
    with backend.open(tmp_path) as connect:
        yield connect


@pytest.fixture
def blob_store(connect_blob_store: ConnectBlobStore) -> BlobStore:
    return connect_blob_store()


@pytest.fixture(params=_params(INDEXES))
def connect_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConnectIndex]:
    backend: Backend[MetadataIndex] = request.param
    with backend.open(tmp_path) as connect:
        yield connect


@pytest.fixture
def index(connect_index: ConnectIndex) -> MetadataIndex:
    return connect_index()


@pytest.fixture(scope="module", params=_params(INDEXES))
def module_index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NamedIndex]:
    """One index per adapter for a whole module (the QIDO corpus is loaded once)."""
    backend: Backend[MetadataIndex] = request.param
    with backend.open(tmp_path_factory.mktemp(backend.name)) as connect:
        yield NamedIndex(backend.name, connect)

"""Adapter factories for the contract suites: every test here runs over every adapter listed below.

A factory is a context manager that takes a fresh working folder and yields `connect`, a callable
that returns a new client of one and the same store (tests that model several function instances
call it once per worker). Leaving the context releases what the factory made (engines, containers).

To add an adapter, add one `pytest.param(factory, id="name")` to `BLOB_STORES` or `INDEXES`. A
factory that needs a service (Azurite, PostgreSQL) calls `pytest.skip(...)` when it is not there,
and should give every test its own container / database / table so tests stay independent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from shared.adapters.blob_filesystem import FileSystemBlobStore
from shared.adapters.index_sql import SqlMetadataIndex
from shared.adapters.index_sql_schema import make_engine
from shared.core.ports import BlobStore, MetadataIndex

ConnectBlobStore = Callable[[], BlobStore]
ConnectIndex = Callable[[], MetadataIndex]
BlobStoreFactory = Callable[[Path], AbstractContextManager[ConnectBlobStore]]
IndexFactory = Callable[[Path], AbstractContextManager[ConnectIndex]]


@contextmanager
def filesystem_blob_store(workdir: Path) -> Iterator[ConnectBlobStore]:
    root = workdir / "blobs"
    yield lambda: FileSystemBlobStore(root)


@contextmanager
def sqlite_index(workdir: Path) -> Iterator[ConnectIndex]:
    url = f"sqlite:///{workdir}/i.sqlite3"
    engines: list[Engine] = []

    def connect() -> MetadataIndex:
        engines.append(make_engine(url))
        return SqlMetadataIndex(url, engine=engines[-1])

    try:
        yield connect
    finally:
        for engine in engines:
            engine.dispose()


BLOB_STORES = [pytest.param(filesystem_blob_store, id="filesystem")]
INDEXES = [pytest.param(sqlite_index, id="sqlite")]


@pytest.fixture(params=BLOB_STORES)
def connect_blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConnectBlobStore]:
    factory: BlobStoreFactory = request.param
    with factory(tmp_path) as connect:
        yield connect


@pytest.fixture
def blob_store(connect_blob_store: ConnectBlobStore) -> BlobStore:
    return connect_blob_store()


@pytest.fixture(params=INDEXES)
def connect_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConnectIndex]:
    factory: IndexFactory = request.param
    with factory(tmp_path) as connect:
        yield connect


@pytest.fixture
def index(connect_index: ConnectIndex) -> MetadataIndex:
    return connect_index()


@pytest.fixture(scope="module", params=INDEXES)
def connect_module_index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConnectIndex]:
    """One index per adapter for a whole module (the QIDO corpus is loaded once)."""
    factory: IndexFactory = request.param
    with factory(tmp_path_factory.mktemp("index")) as connect:
        yield connect

"""Blob drop on Azure Blob Storage (Azurite): the ingestion scenarios of tests/unit/test_ingest.py
over AzureBlobStore containers (inbox, failure container, instance store) and a SQLite index, and
the upload URLs: a create+write SAS that accepts a PUT of a real DICOM file, refuses reads, lists
and other blob names, and expires.

The scenario tests are imported from the unit module, so pytest runs them here again with this
module's `make_drop` fixture (Azurite instead of folders).
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from shared.adapters.blob_azure import AzureBlobStore
from shared.adapters.blob_azure_sas import AzureUploadSigner, SigningUnavailable
from shared.adapters.index_sql import SqlMetadataIndex
from shared.core.ingest import IngestStatus
from tests.services import azurite
from tests.unit.test_ingest import (  # noqa: F401 - collected here again, over Azurite
    DATA,
    Drop,
    MakeDrop,
    test_a_broken_file_is_moved_aside_with_a_report,
    test_a_crash_before_the_inbox_delete_is_healed_by_redelivery,
    test_a_different_file_with_the_same_uids_is_a_duplicate,
    test_a_dropped_dicom_file_is_stored_and_leaves_the_inbox,
    test_a_file_over_the_instance_limit_is_refused_whole,
    test_a_non_dicom_file_is_reported_not_retried,
    test_a_series_dropped_file_by_file_is_indexed_as_one_series,
    test_an_unavailable_failure_container_raises_and_moves_nothing,
    test_an_unavailable_service_raises_and_leaves_the_inbox_blob,
    test_any_name_works_and_the_failure_key_mirrors_it,
    test_redelivery_of_a_handled_event_changes_nothing,
    test_the_same_bytes_dropped_again_are_not_stored_twice,
    test_with_overwrite_a_different_file_with_the_same_uids_replaces,
    test_without_a_stream_the_file_is_read_from_the_inbox,
)

BLOCK_BLOB = {"x-ms-blob-type": "BlockBlob"}


def container_name(role: str) -> str:
    return f"t{uuid.uuid4().hex[:20]}-{role}"


@pytest.fixture
def conn() -> str:
    return azurite()


@pytest.fixture
def make_drop(conn: str, tmp_path: Path) -> Iterator[MakeDrop]:
    """`make_drop(...)` (see the unit module) over three fresh Azurite containers and SQLite."""
    made: list[AzureBlobStore] = []
    containers: list[str] = []

    def store(role: str) -> AzureBlobStore:
        containers.append(container_name(role))
        made.append(AzureBlobStore.from_connection_string(conn, containers[-1], retry_total=0))
        return made[-1]

    def make(overwrite: bool = False, **wraps: Callable[[Any], Any]) -> Drop:
        def wrap(kind: str, adapter: Any) -> Any:
            return wraps.get(f"wrap_{kind}", lambda a: a)(adapter)

        return Drop(
            inbox=wrap("inbox", store("inbox")),
            failed=wrap("failed", store("failed")),
            blobs=wrap("blobs", store("blobs")),
            index=wrap("index", SqlMetadataIndex(f"sqlite:///{tmp_path}/index-{len(made)}.sqlite3")),
            overwrite=overwrite,
        )

    yield make
    for each in made:
        each.close()
    with BlobServiceClient.from_connection_string(conn) as service:
        for name in containers:
            with contextlib.suppress(ResourceNotFoundError):  # never used, never made
                service.delete_container(name)


# --- upload URLs --------------------------------------------------------------------------------
@pytest.fixture
def inbox(conn: str) -> Iterator[tuple[str, AzureUploadSigner]]:
    name = container_name("inbox")
    signer = AzureUploadSigner.from_connection_string(conn, name)
    yield name, signer
    signer.close()
    with BlobServiceClient.from_connection_string(conn) as service:
        service.delete_container(name)


def _sibling(url: str, other: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rsplit("/", 1)[0] + "/" + other
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def test_an_upload_url_takes_a_put_of_a_dicom_file_and_nothing_else(
    conn: str, inbox: tuple[str, AzureUploadSigner], tmp_path: Path
) -> None:
    container, signer = inbox
    assert signer.kind == "account-key"
    grant = signer.sign_upload("uploads/abc/scan.dcm", timedelta(minutes=5))
    assert grant.blob_name == "uploads/abc/scan.dcm"
    assert timedelta(minutes=4) < grant.expires_on - datetime.now(UTC) <= timedelta(minutes=5)
    data = (DATA / "mr/emri_small_jpeg_2k_lossless.dcm").read_bytes()
    with httpx.Client(timeout=30) as http:
        put = http.put(grant.url, content=data, headers=BLOCK_BLOB)
        assert put.status_code == 201, put.text
        assert http.get(grant.url).status_code == 403  # no read
        assert http.head(grant.url).status_code == 403
        assert http.delete(grant.url).status_code == 403  # no delete
        other = http.put(_sibling(grant.url, "other.dcm"), content=data, headers=BLOCK_BLOB)
        assert other.status_code == 403  # the SAS names one blob
        listing = urlunsplit(urlsplit(grant.url)._replace(path=f"/devstoreaccount1/{container}"))
        assert http.get(listing, params={"restype": "container", "comp": "list"}).status_code == 403
    store = AzureBlobStore.from_connection_string(conn, container, create_container=False)
    try:
        assert list(store.list()) == ["uploads/abc/scan.dcm"]
        with store.open("uploads/abc/scan.dcm") as fp:
            assert fp.read() == data
    finally:
        store.close()


def test_an_upload_url_expires(inbox: tuple[str, AzureUploadSigner]) -> None:
    _container, signer = inbox
    grant = signer.sign_upload("uploads/late.dcm", timedelta(seconds=3))
    with httpx.Client(timeout=30) as http:
        assert http.put(grant.url, content=b"DICM", headers=BLOCK_BLOB).status_code == 201
        time.sleep(4.5)
        late = http.put(grant.url, content=b"DICM", headers=BLOCK_BLOB)
    assert late.status_code == 403


def test_a_file_uploaded_by_url_is_ingested(make_drop: MakeDrop, conn: str) -> None:
    drop = make_drop()
    container = drop.inbox._container.container_name  # type: ignore[attr-defined]
    signer = AzureUploadSigner.from_connection_string(conn, container)
    try:
        grant = signer.sign_upload("uploads/x/ct.dcm", timedelta(minutes=1))
    finally:
        signer.close()
    data = (DATA / "ct/CT_small.dcm").read_bytes()
    assert httpx.put(grant.url, content=data, headers=BLOCK_BLOB, timeout=30).status_code == 201
    assert drop.deliver("uploads/x/ct.dcm").status is IngestStatus.STORED
    (stored,) = drop.stored(data)
    assert drop.stored_bytes(stored) == data and drop.inbox_names() == set()


def test_a_connection_string_without_a_key_cannot_sign() -> None:
    sas_only = "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;SharedAccessSignature=sv=2021-08-06&sig=x"
    with pytest.raises(SigningUnavailable):
        AzureUploadSigner.from_connection_string(sas_only, "inbox")


def test_the_inbox_container_is_made_on_first_use(conn: str) -> None:
    name = container_name("inbox")
    signer = AzureUploadSigner.from_connection_string(conn, name)
    try:
        grant = signer.sign_upload("first.dcm", timedelta(minutes=1))
        put = httpx.put(grant.url, content=io.BytesIO(b"x").read(), headers=BLOCK_BLOB, timeout=30)
        assert put.status_code == 201
    finally:
        signer.close()
        with BlobServiceClient.from_connection_string(conn) as service:
            service.delete_container(name)

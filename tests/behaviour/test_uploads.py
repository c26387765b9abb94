"""Upload URLs for blob drop through HTTP: `POST /inbox/uploads` on the dev host.

On the filesystem backend there is no SAS (501, pointing at the inbox folder and STOW-RS). With
the blob store on Azurite the answer is a short-lived, write-only SAS URL for a new inbox blob
that takes a PUT of a real DICOM file and refuses a read.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pydicom
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from tests.behaviour import DATA, DICOM_JSON
from tests.behaviour.conftest import Server, ServerPool
from tests.services import azurite

UPLOADS = "/inbox/uploads"
BLOCK_BLOB = {"x-ms-blob-type": "BlockBlob"}


def test_on_the_filesystem_backend_there_are_no_upload_urls(servers: ServerPool) -> None:
    server = servers.get("files+sqlite")
    response = server.post(UPLOADS, b"", None)
    assert response.status_code == 501
    text = response.text
    assert "inbox" in text and "STOW-RS" in text
    assert str(server.data_dir) not in text  # no server paths in answers


@pytest.fixture(scope="module")
def azure_server(servers: ServerPool) -> Iterator[tuple[Server, str, str]]:
    """A dev host whose blob store (and so its inbox) is on Azurite."""
    conn = azurite()
    tag = uuid.uuid4().hex[:12]
    inbox, blobs = f"inbox-{tag}", f"dicom-{tag}"
    server = servers.get(
        "files+sqlite",
        {
            "DICOMWEB_BLOB_STORE": "azure",
            "DICOMWEB_BLOB_CONNECTION_STRING": conn,
            "DICOMWEB_BLOB_CONTAINER": blobs,
            "DICOMWEB_INBOX_CONTAINER": inbox,
            "DICOMWEB_FAILED_CONTAINER": f"failed-{tag}",
            "DICOMWEB_UPLOAD_SAS_MINUTES": "5",
        },
    )
    yield server, conn, inbox
    with BlobServiceClient.from_connection_string(conn) as service:
        for name in (inbox, blobs, f"failed-{tag}"):
            with contextlib.suppress(ResourceNotFoundError):
                service.delete_container(name)


def _grant(server: Server, body: bytes, content_type: str | None = "application/json") -> dict[str, Any]:
    response = server.post(UPLOADS, body, content_type)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    doc: dict[str, Any] = response.json()
    return doc


def test_an_upload_url_takes_a_dicom_file_and_refuses_a_read(azure_server: tuple[Server, str, str]) -> None:
    server, conn, inbox = azure_server
    before = datetime.now(UTC)
    grant = _grant(server, b'{"fileName": "C:\\\\scans\\\\My Scan.dcm"}')
    assert set(grant) == {"uploadUrl", "blobName", "expiresOn", "method", "headers"}
    assert grant["method"] == "PUT" and grant["headers"] == BLOCK_BLOB
    prefix, token, file_name = grant["blobName"].split("/")
    assert (prefix, len(token), file_name) == ("uploads", 32, "My_Scan.dcm")
    expires = datetime.fromisoformat(grant["expiresOn"].replace("Z", "+00:00"))
    assert timedelta(minutes=4) < expires - before <= timedelta(minutes=5, seconds=1)
    assert f"/{inbox}/uploads/{token}/My_Scan.dcm?" in grant["uploadUrl"]
    data = (DATA / "ct/CT_small.dcm").read_bytes()
    with httpx.Client(timeout=30) as http:
        assert http.put(grant["uploadUrl"], content=data, headers=BLOCK_BLOB).status_code == 201
        assert http.get(grant["uploadUrl"]).status_code == 403
    # the file is in the inbox, unless the dev host's blob events have already stored it
    with BlobServiceClient.from_connection_string(conn) as service:
        blob = service.get_blob_client(inbox, grant["blobName"])
        try:
            assert blob.download_blob().readall() == data
        except ResourceNotFoundError:
            sop = str(pydicom.dcmread(DATA / "ct/CT_small.dcm", stop_before_pixels=True).SOPInstanceUID)
            assert server.search("/instances", {"SOPInstanceUID": sop})


def test_each_upload_url_names_a_new_blob(azure_server: tuple[Server, str, str]) -> None:
    server, _conn, _inbox = azure_server
    names = {_grant(server, b"", None)["blobName"] for _ in range(3)}
    assert len(names) == 3
    assert all(name.startswith("uploads/") and name.endswith(".dcm") for name in names)


BAD_BODIES = [
    (b"{not json", 400, "not JSON"),
    (b"[1, 2]", 400, "not an object"),
    (b'{"fileName": 42}', 400, "fileName not a string"),
    (b"x" * 5000, 413, "too large"),
]


@pytest.mark.parametrize(("body", "status"), [b[:2] for b in BAD_BODIES], ids=[b[2] for b in BAD_BODIES])
def test_a_malformed_request_body_is_refused(
    azure_server: tuple[Server, str, str], body: bytes, status: int
) -> None:
    server, _conn, _inbox = azure_server
    response = server.post(UPLOADS, body, "application/json", Accept=DICOM_JSON)
    assert response.status_code == status

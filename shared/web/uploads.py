"""Upload URLs for blob drop: `POST /inbox/uploads` hands out a short-lived, write-only SAS URL
for a new blob in the inbox container, so a file too large for one HTTP request goes straight to
storage and the blob trigger stores it.

Request body (optional): `{"fileName": "scan.dcm"}`; the name is sanitised and placed under a
fresh folder. Answer 201: `{"uploadUrl", "blobName", "expiresOn", "method", "headers"}`. On the
filesystem backend there is no SAS: 501, and files dropped into the inbox folder are ingested.
Setting: DICOMWEB_UPLOAD_SAS_MINUTES (default 15) is how long a URL stays valid.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from datetime import UTC, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared.bootstrap import App, build_upload_signer
from shared.core.errors import BadRequest, PayloadTooLarge
from shared.web.common import app_for, guarded, json_response

SAS_MINUTES = "DICOMWEB_UPLOAD_SAS_MINUTES"
DEFAULT_MINUTES = 15
MAX_MINUTES = 7 * 24 * 60  # a user delegation SAS lives at most 7 days
MAX_BODY = 4096
MAX_FILE_NAME = 100
UPLOAD_PREFIX = "uploads"

_lock = threading.Lock()
_signer: tuple[App, Any] | None = None  # the signer of the app in use, built on first use


def lifetime() -> timedelta:
    """How long an upload URL stays valid (DICOMWEB_UPLOAD_SAS_MINUTES, 1 minute to 7 days)."""
    raw = (os.environ.get(SAS_MINUTES) or "").strip()
    if not raw:
        return timedelta(minutes=DEFAULT_MINUTES)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_MINUTES:
        raise ValueError(f"{SAS_MINUTES} must be a whole number of minutes from 1 to {MAX_MINUTES}")
    return timedelta(minutes=int(raw))


def safe_file_name(raw: str) -> str:
    """A client's file name reduced to its last path segment in letters, digits, `.`, `_`, `-`
    ("" when nothing is left)."""
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")
    if len(clean) > MAX_FILE_NAME:
        _stem, dot, ext = clean.rpartition(".")
        keep = ext if dot and 0 < len(ext) <= 10 else ""
        clean = clean[: MAX_FILE_NAME - len(keep) - 1].rstrip("._-") + ("." + keep if keep else "")
    return clean


def new_blob_name(file_name: str | None) -> str:
    """A blob name no one has used: `uploads/<uuid>.dcm`, or `uploads/<uuid>/<file name>`."""
    token = uuid.uuid4().hex
    clean = safe_file_name(file_name) if file_name else ""
    return f"{UPLOAD_PREFIX}/{token}/{clean}" if clean else f"{UPLOAD_PREFIX}/{token}.dcm"


class NoUploads(Exception):
    """The blob backend cannot hand out upload URLs (answered with 501 and this message)."""


FILESYSTEM_MESSAGE = (
    "upload URLs need Azure Blob Storage (DICOMWEB_BLOB_STORE=azure); on the filesystem backend, "
    "blob drop works by writing files into the inbox folder (DICOMWEB_DATA_DIR/inbox), "
    "or store them with STOW-RS (POST /studies)"
)


def _build_signer(app: App) -> Any:
    if app.settings.blob_store != "azure":
        raise NoUploads(FILESYSTEM_MESSAGE)
    signer, reason = build_upload_signer(app.settings)
    if signer is None:
        raise NoUploads(reason)
    return signer


def signer_for(app: App) -> Any:
    """The upload signer of the app's inbox, built once per app; NoUploads when there is none."""
    global _signer
    with _lock:
        if _signer is None or _signer[0] is not app:
            try:
                built: Any = _build_signer(app)
            except NoUploads as exc:
                built = exc
            _signer = (app, built)
        signer = _signer[1]
    if isinstance(signer, NoUploads):
        raise NoUploads(str(signer))
    return signer


async def _file_name(request: Request) -> str | None:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(f"the request body is larger than {MAX_BODY} bytes")
    if not body.strip():
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        raise BadRequest('the request body must be JSON: {"fileName": "..."} or empty') from None
    if not isinstance(doc, dict):
        raise BadRequest('the request body must be a JSON object: {"fileName": "..."}')
    name = doc.get("fileName")
    if name is not None and not isinstance(name, str):
        raise BadRequest("fileName must be a string")
    return name


@guarded
async def create_upload(request: Request) -> Response:
    """POST /inbox/uploads: a write-only SAS URL for a new inbox blob."""
    app = app_for(request)
    file_name = await _file_name(request)
    valid_for = lifetime()
    try:
        signer = await run_in_threadpool(signer_for, app)
    except NoUploads as exc:
        return Response(f"{exc}\n", status_code=501, media_type="text/plain")
    grant = await run_in_threadpool(signer.sign_upload, new_blob_name(file_name), valid_for)
    body = {
        "uploadUrl": grant.url,
        "blobName": grant.blob_name,
        "expiresOn": grant.expires_on.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "method": "PUT",
        "headers": {"x-ms-blob-type": "BlockBlob"},
    }
    response = json_response(body, 201, media_type="application/json")
    response.headers["Cache-Control"] = "no-store"  # the URL is a credential
    return response

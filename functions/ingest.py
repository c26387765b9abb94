"""Blob drop: each new blob in the inbox container is stored like a STOW-RS instance.

Event Grid is the source (lower latency than polling; the only kind on Flex Consumption). The
container name comes from the app setting DICOMWEB_INBOX_CONTAINER ("inbox" by default in
local.settings.sample.json); `{name}` captures the rest of the path, subfolders included.
Delivery is at least once and `shared.core.ingest` is idempotent; an error raised here (a backing
service is unavailable) makes the host deliver the event again.
"""

from __future__ import annotations

import logging
from typing import BinaryIO, cast

import azure.functions as func

from shared.bootstrap import App, get_app
from shared.core.ingest import IngestOutcome, IngestPolicy, ingest

log = logging.getLogger(__name__)

bp = func.Blueprint()


def inbox_name(trigger_name: str | None, container: str) -> str:
    """The blob's name in the inbox: the trigger's `name` is `<container>/<name>`, as in Azure."""
    if not trigger_name:
        raise ValueError("the blob trigger gave no blob name")
    prefix = container.strip("/") + "/"
    return trigger_name[len(prefix) :] if trigger_name.startswith(prefix) else trigger_name


def ingest_into(app: App, trigger_name: str | None, blob: func.InputStream | None) -> IngestOutcome:
    """Run one blob-created event through the store pipeline, then publish pending events."""
    settings = app.settings
    outcome = ingest(
        inbox_name(trigger_name, settings.inbox_container),
        cast(BinaryIO | None, blob),  # a readable stream of the blob's bytes
        inbox=app.inbox,
        failed=app.failed,
        service=app.service,
        policy=IngestPolicy(settings.max_instance_bytes, settings.spool_memory_bytes),
    )
    if outcome.stored:
        # A failure here never fails the ingestion: the change feed keeps what could not be
        # published and the timer republishes it.
        try:
            app.publisher.publish_after_change()
        except Exception as exc:
            log.warning("ingest: publishing events failed (%s); they will be republished", type(exc).__name__)
    return outcome


@bp.blob_trigger(
    arg_name="blob",
    path="%DICOMWEB_INBOX_CONTAINER%/{name}",
    connection="AzureWebJobsStorage",
    source=func.BlobSource.EVENT_GRID,
)
def ingest_blob(blob: func.InputStream) -> None:
    outcome = ingest_into(get_app(), blob.name, blob)
    log.info("ingest_blob: %s", outcome.status.value)

"""The composition root: builds the service from the settings on first use, once per process.

Nothing connects at import time (that would cost every cold start on Functions).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.core.ports import BlobStore, EventQueue, MetadataIndex
from shared.core.publisher import ChangePublisher
from shared.core.service import DicomwebService
from shared.core.store import InstanceStore, StorePolicy

_lock = threading.Lock()
_app: App | None = None
_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class App:
    settings: Settings
    service: DicomwebService
    route_prefix: str
    inbox: BlobStore  # blob drop: new files here are ingested like a STOW
    failed: BlobStore  # files that could not be stored, each beside a JSON report
    events: EventQueue
    publisher: ChangePublisher  # change feed -> events: after each STOW and delete, and on a timer


def route_prefix() -> str:
    """The `routePrefix` of host.json ("api" when absent, as the Functions host does)."""
    try:
        host = json.loads((_ROOT / "host.json").read_text())
    except (OSError, ValueError):
        return "api"
    prefix = host.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    return str(prefix).strip("/")


def configure_pydicom() -> None:
    """Process-wide pydicom policy: keep values as they are and never warn about them.

    The server validates what it relies on (UIDs, dates) itself; pydicom's per-value warnings
    would only fill logs, and `warnings.catch_warnings` is not safe in the worker threads.
    """
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE


def build_blob_store(settings: Settings) -> BlobStore:
    """The store of the instances and their metadata (folder `blobs` on the filesystem backend)."""
    return build_container(settings, settings.blob_container, folder="blobs")


def build_container(settings: Settings, container: str, folder: str | None = None) -> BlobStore:
    """One container of the configured blob backend; vendor modules are imported only when chosen.

    On the filesystem backend the container is a folder of the data folder (`folder`, else its name).
    """
    if settings.blob_store == "azure":
        from shared.adapters.blob_azure import AzureBlobStore

        if settings.blob_connection_string:
            return AzureBlobStore.from_connection_string(
                settings.blob_connection_string, container, create_container=settings.create_containers
            )
        assert settings.blob_account_url is not None
        return AzureBlobStore.from_account_url(
            settings.blob_account_url, container, create_container=settings.create_containers
        )
    from shared.adapters.blob_filesystem import FileSystemBlobStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return FileSystemBlobStore(settings.data_dir / (folder or container))


def build_upload_signer(settings: Settings) -> tuple[Any, str]:
    """The signer of upload URLs into the inbox (Azure only), or None and why there is none."""
    from shared.adapters.blob_azure_sas import AzureUploadSigner, SigningUnavailable

    try:
        if settings.blob_connection_string:
            signer = AzureUploadSigner.from_connection_string(
                settings.blob_connection_string,
                settings.inbox_container,
                create_container=settings.create_containers,
            )
        else:
            assert settings.blob_account_url is not None
            signer = AzureUploadSigner.from_account_url(
                settings.blob_account_url,
                settings.inbox_container,
                create_container=settings.create_containers,
            )
    except SigningUnavailable as exc:
        return None, str(exc)
    return signer, ""


def build_events(settings: Settings) -> EventQueue:
    """The event queue: in-process (dev host, tests) or Azure Service Bus."""
    if settings.events == "servicebus":
        from shared.adapters.queue_servicebus import ServiceBusEventQueue

        if settings.servicebus_connection_string:
            return ServiceBusEventQueue.from_connection_string(
                settings.servicebus_connection_string, settings.events_queue
            )
        assert settings.servicebus_namespace is not None
        return ServiceBusEventQueue.from_namespace(settings.servicebus_namespace, settings.events_queue)
    from shared.adapters.queue_inprocess import InProcessEventQueue

    return InProcessEventQueue(max_delivery_count=settings.events_max_delivery)


def build_index(settings: Settings) -> MetadataIndex:
    """The metadata index the settings name."""
    if settings.index == "table":
        from shared.adapters.index_table import TableMetadataIndex

        if settings.table_connection_string:
            return TableMetadataIndex.from_connection_string(
                settings.table_connection_string, prefix=settings.table_prefix, partition=settings.partition
            )
        assert settings.table_account_url is not None
        return TableMetadataIndex.from_account_url(
            settings.table_account_url, prefix=settings.table_prefix, partition=settings.partition
        )
    from shared.adapters.index_sql import SqlMetadataIndex

    if settings.index_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqlMetadataIndex(settings.index_url, partition=settings.partition)


def quiet_sdk_logs() -> None:
    """The Azure SDKs log every HTTP request at INFO; one line per DICOMweb request is enough."""
    import logging

    for name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "uamqp"):
        logging.getLogger(name).setLevel(logging.WARNING)


def build(settings: Settings) -> App:
    configure_pydicom()
    quiet_sdk_logs()
    blobs = build_blob_store(settings)
    index = build_index(settings)
    policy = StorePolicy(
        partition=settings.partition,
        overwrite_existing=settings.overwrite_existing,
        bulk_data_threshold=settings.bulk_data_threshold,
    )
    service = DicomwebService(blobs, index, InstanceStore(blobs, index, policy), settings.partition)
    events = build_events(settings)
    return App(
        settings,
        service,
        route_prefix(),
        inbox=build_container(settings, settings.inbox_container),
        failed=build_container(settings, settings.failed_container),
        events=events,
        publisher=ChangePublisher(
            index, events, partition=settings.partition, batch_seconds=settings.events_batch_ms / 1000
        ),
    )


def get_app() -> App:
    global _app
    if _app is None:
        with _lock:
            if _app is None:
                _app = build(Settings.from_env())
    return _app


def reset() -> None:
    """Forget the built app (tests that change settings call this)."""
    global _app
    with _lock:
        _app = None

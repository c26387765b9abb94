"""Settings from the environment, each with an embedded default that works on a laptop.

Under `func start` the environment comes from local.settings.json; in Azure from the app settings.
Nothing here connects to anything: `shared.bootstrap` builds the service lazily from a `Settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# App settings that trigger bindings name as %SETTING% (the inbox container of the blob trigger,
# the events queue of Service Bus triggers). The Functions host resolves them from the app settings
# (infra/ sets them); `apply_binding_defaults` gives the dev host the same embedded defaults.
BINDING_DEFAULTS = {
    "DICOMWEB_INBOX_CONTAINER": "inbox",
    "DICOMWEB_EVENTS_QUEUE": "dicom-events",
}


def apply_binding_defaults(environ: dict[str, str] | os._Environ[str]) -> None:
    for name, value in BINDING_DEFAULTS.items():
        if not environ.get(name):
            environ[name] = value


class SettingsError(ValueError):
    """A setting has a value the server cannot use; raised at the first request, named clearly."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    blob_store: str  # "filesystem" or "azure"
    blob_connection_string: str | None  # Azure: a connection string (Azurite, AzureWebJobsStorage) ...
    blob_account_url: str | None  # ... or an account URL, authenticated by managed identity
    blob_container: str
    create_containers: bool
    index: str  # "sql" or "table"
    index_url: str  # SQL: a SQLAlchemy URL; SQLite under data_dir by default, or PostgreSQL
    table_connection_string: str | None
    table_account_url: str | None
    table_prefix: str
    partition: str
    max_request_bytes: int
    max_parts: int
    max_instance_bytes: int
    qido_default_limit: int
    qido_max_limit: int
    bulk_data_threshold: int
    overwrite_existing: bool
    spool_memory_bytes: int
    store_batch_parts: int  # STOW: parts received while a batch is stored go together as the next
    store_batch_bytes: int
    public_base_url: str | None
    inbox_container: str  # blob drop: files written here are ingested like a STOW
    failed_container: str  # ... and those that cannot be stored are moved here with a JSON report
    events: str  # "inprocess" (dev host, tests) or "servicebus"
    servicebus_connection_string: str | None
    servicebus_namespace: str | None  # fully qualified namespace, managed identity
    events_queue: str
    events_max_delivery: int
    events_batch_ms: int  # changes are published at most this long after they commit, in batches
    study_quiet_seconds: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("DICOMWEB_DATA_DIR") or ".data").resolve()
        index_url = env.get("DICOMWEB_INDEX_URL") or f"sqlite:///{data_dir / 'index.sqlite3'}"
        for plain in ("postgresql://", "postgres://"):  # the driver this project installs: psycopg 3
            if index_url.startswith(plain):
                index_url = "postgresql+psycopg://" + index_url[len(plain) :]
        blob_store = (env.get("DICOMWEB_BLOB_STORE") or "filesystem").strip().lower()
        if blob_store not in {"filesystem", "azure"}:
            raise SettingsError(f"DICOMWEB_BLOB_STORE must be 'filesystem' or 'azure', got {blob_store!r}")
        index = (env.get("DICOMWEB_INDEX") or "sql").strip().lower()
        if index not in {"sql", "table"}:
            raise SettingsError(f"DICOMWEB_INDEX must be 'sql' or 'table', got {index!r}")
        storage = env.get("AzureWebJobsStorage") or None
        blob_url = env.get("DICOMWEB_BLOB_ACCOUNT_URL") or None
        blob_conn = env.get("DICOMWEB_BLOB_CONNECTION_STRING") or (None if blob_url else storage)
        table_url = env.get("DICOMWEB_TABLE_ACCOUNT_URL") or None
        table_conn = env.get("DICOMWEB_TABLE_CONNECTION_STRING") or (None if table_url else storage)
        if blob_store == "azure" and not (blob_conn or blob_url):
            raise SettingsError(
                "DICOMWEB_BLOB_STORE=azure needs DICOMWEB_BLOB_CONNECTION_STRING, DICOMWEB_BLOB_ACCOUNT_URL"
                " or AzureWebJobsStorage"
            )
        if index == "table" and not (table_conn or table_url):
            raise SettingsError(
                "DICOMWEB_INDEX=table needs DICOMWEB_TABLE_CONNECTION_STRING, DICOMWEB_TABLE_ACCOUNT_URL"
                " or AzureWebJobsStorage"
            )
        events = (env.get("DICOMWEB_EVENTS") or "inprocess").strip().lower()
        if events not in {"inprocess", "servicebus"}:
            raise SettingsError(f"DICOMWEB_EVENTS must be 'inprocess' or 'servicebus', got {events!r}")
        sb_conn = env.get("DICOMWEB_SERVICEBUS_CONNECTION_STRING") or None
        sb_namespace = env.get("DICOMWEB_SERVICEBUS_NAMESPACE") or None
        if events == "servicebus" and not (sb_conn or sb_namespace):
            raise SettingsError(
                "DICOMWEB_EVENTS=servicebus needs DICOMWEB_SERVICEBUS_CONNECTION_STRING"
                " or DICOMWEB_SERVICEBUS_NAMESPACE"
            )
        default_limit = _int(env, "DICOMWEB_QIDO_DEFAULT_LIMIT", 100, minimum=1)
        max_limit = _int(env, "DICOMWEB_QIDO_MAX_LIMIT", 1000, minimum=1)
        if default_limit > max_limit:
            raise SettingsError("DICOMWEB_QIDO_DEFAULT_LIMIT must not exceed DICOMWEB_QIDO_MAX_LIMIT")
        return cls(
            data_dir=data_dir,
            blob_store=blob_store,
            blob_connection_string=blob_conn,
            blob_account_url=blob_url,
            blob_container=env.get("DICOMWEB_BLOB_CONTAINER") or "dicom",
            create_containers=_bool(env, "DICOMWEB_CREATE_CONTAINERS", True),
            index=index,
            index_url=index_url,
            table_connection_string=table_conn,
            table_account_url=table_url,
            table_prefix=env.get("DICOMWEB_TABLE_PREFIX") or "dicom",
            partition=env.get("DICOMWEB_PARTITION") or "default",
            max_request_bytes=_int(env, "DICOMWEB_MAX_REQUEST_BYTES", 2 * 1024**3, minimum=1),
            max_parts=_int(env, "DICOMWEB_MAX_PARTS", 10_000, minimum=1),
            max_instance_bytes=_int(env, "DICOMWEB_MAX_INSTANCE_BYTES", 2 * 1024**3, minimum=1),
            qido_default_limit=default_limit,
            qido_max_limit=max_limit,
            bulk_data_threshold=_int(env, "DICOMWEB_BULKDATA_THRESHOLD", 1024, minimum=0),
            overwrite_existing=_bool(env, "DICOMWEB_OVERWRITE_EXISTING", False),
            spool_memory_bytes=_int(env, "DICOMWEB_SPOOL_MEMORY_BYTES", 8 * 1024**2, minimum=0),
            store_batch_parts=_int(env, "DICOMWEB_STORE_BATCH_PARTS", 100, minimum=1),
            store_batch_bytes=_int(env, "DICOMWEB_STORE_BATCH_BYTES", 8 * 1024**2, minimum=1),
            public_base_url=(env.get("DICOMWEB_PUBLIC_BASE_URL") or None),
            inbox_container=env.get("DICOMWEB_INBOX_CONTAINER") or "inbox",
            failed_container=env.get("DICOMWEB_FAILED_CONTAINER") or "inbox-failed",
            events=events,
            servicebus_connection_string=sb_conn,
            servicebus_namespace=sb_namespace,
            events_queue=env.get("DICOMWEB_EVENTS_QUEUE") or "dicom-events",
            events_max_delivery=_int(env, "DICOMWEB_EVENTS_MAX_DELIVERY", 10, minimum=1),
            events_batch_ms=_int(env, "DICOMWEB_EVENTS_BATCH_MS", 200),
            study_quiet_seconds=_int(env, "DICOMWEB_STUDY_QUIET_SECONDS", 300, minimum=1),
        )

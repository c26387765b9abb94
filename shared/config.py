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
    blob_store: str  # "filesystem"
    index_url: str  # a SQLAlchemy URL; SQLite under data_dir by default
    partition: str
    max_request_bytes: int
    max_parts: int
    max_instance_bytes: int
    qido_default_limit: int
    qido_max_limit: int
    bulk_data_threshold: int
    overwrite_existing: bool
    spool_memory_bytes: int
    public_base_url: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("DICOMWEB_DATA_DIR") or ".data").resolve()
        index_url = env.get("DICOMWEB_INDEX_URL") or f"sqlite:///{data_dir / 'index.sqlite3'}"
        blob_store = (env.get("DICOMWEB_BLOB_STORE") or "filesystem").strip().lower()
        if blob_store not in {"filesystem"}:
            raise SettingsError(f"DICOMWEB_BLOB_STORE must be 'filesystem', got {blob_store!r}")
        default_limit = _int(env, "DICOMWEB_QIDO_DEFAULT_LIMIT", 100, minimum=1)
        max_limit = _int(env, "DICOMWEB_QIDO_MAX_LIMIT", 1000, minimum=1)
        if default_limit > max_limit:
            raise SettingsError("DICOMWEB_QIDO_DEFAULT_LIMIT must not exceed DICOMWEB_QIDO_MAX_LIMIT")
        return cls(
            data_dir=data_dir,
            blob_store=blob_store,
            index_url=index_url,
            partition=env.get("DICOMWEB_PARTITION") or "default",
            max_request_bytes=_int(env, "DICOMWEB_MAX_REQUEST_BYTES", 2 * 1024**3, minimum=1),
            max_parts=_int(env, "DICOMWEB_MAX_PARTS", 10_000, minimum=1),
            max_instance_bytes=_int(env, "DICOMWEB_MAX_INSTANCE_BYTES", 2 * 1024**3, minimum=1),
            qido_default_limit=default_limit,
            qido_max_limit=max_limit,
            bulk_data_threshold=_int(env, "DICOMWEB_BULKDATA_THRESHOLD", 1024, minimum=0),
            overwrite_existing=_bool(env, "DICOMWEB_OVERWRITE_EXISTING", False),
            spool_memory_bytes=_int(env, "DICOMWEB_SPOOL_MEMORY_BYTES", 8 * 1024**2, minimum=0),
            public_base_url=(env.get("DICOMWEB_PUBLIC_BASE_URL") or None),
        )

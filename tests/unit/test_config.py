"""Settings: embedded defaults, backend selection, and clear errors for unusable values."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings, SettingsError


def test_embedded_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({"DICOMWEB_DATA_DIR": str(tmp_path)})
    assert settings.blob_store == "filesystem" and settings.index == "sql"
    assert settings.index_url == f"sqlite:///{tmp_path / 'index.sqlite3'}"
    assert settings.qido_default_limit == 100 and settings.qido_max_limit == 1000
    assert settings.overwrite_existing is False


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
    ids=["postgresql", "postgres", "explicit-driver"],
)
def test_postgresql_urls_use_psycopg3(url: str, expected: str) -> None:
    assert Settings.from_env({"DICOMWEB_INDEX_URL": url}).index_url == expected


def test_azure_backends_fall_back_to_azure_web_jobs_storage() -> None:
    env = {
        "DICOMWEB_BLOB_STORE": "azure",
        "DICOMWEB_INDEX": "table",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    }
    settings = Settings.from_env(env)
    assert settings.blob_connection_string == "UseDevelopmentStorage=true"
    assert settings.table_connection_string == "UseDevelopmentStorage=true"


def test_account_url_means_managed_identity_not_the_storage_connection() -> None:
    env = {
        "DICOMWEB_BLOB_STORE": "azure",
        "DICOMWEB_BLOB_ACCOUNT_URL": "https://acct.blob.core.windows.net",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    }
    settings = Settings.from_env(env)
    assert settings.blob_account_url == "https://acct.blob.core.windows.net"
    assert settings.blob_connection_string is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DICOMWEB_BLOB_STORE": "s3"}, "DICOMWEB_BLOB_STORE"),
        ({"DICOMWEB_INDEX": "mongo"}, "DICOMWEB_INDEX"),
        ({"DICOMWEB_BLOB_STORE": "azure"}, "needs DICOMWEB_BLOB_CONNECTION_STRING"),
        ({"DICOMWEB_MAX_PARTS": "many"}, "DICOMWEB_MAX_PARTS must be an integer"),
        ({"DICOMWEB_MAX_PARTS": "0"}, "at least 1"),
        ({"DICOMWEB_OVERWRITE_EXISTING": "maybe"}, "true or false"),
        ({"DICOMWEB_QIDO_DEFAULT_LIMIT": "500", "DICOMWEB_QIDO_MAX_LIMIT": "100"}, "must not exceed"),
    ],
    ids=["blob-store", "index", "azure-without-account", "not-int", "too-small", "not-bool", "limits"],
)
def test_unusable_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)

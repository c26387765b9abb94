"""Short-lived, write-only SAS URLs for new blobs of one container (the inbox), so a client can
upload a file too large for one HTTP request straight to storage; the blob trigger takes over.

- Account URL (managed identity in Azure): a user delegation SAS, signed with a user delegation
  key that the identity asks for (it needs a role that grants
  `Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey`, for example Storage
  Blob Data Contributor). The key is kept and reused until it is close to its end.
- Connection string with an AccountKey (Azurite, a key-based account): an account key (service)
  SAS.
Either way the SAS names one blob and grants create and write only: no read, list or delete.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    UserDelegationKey,
    generate_blob_sas,
)

from shared.adapters.blob_azure import client_options
from shared.adapters.blob_azure_errors import Action, translated

log = logging.getLogger(__name__)

UPLOAD_PERMISSION = BlobSasPermissions(create=True, write=True)
KEY_LIFETIME = timedelta(hours=6)
"""How long a fetched user delegation key is valid (at most 7 days)."""
CLOCK_SKEW = timedelta(minutes=5)
MAX_LIFETIME = timedelta(days=7)


class SigningUnavailable(Exception):
    """The configured credentials cannot sign a SAS (for example a SAS-only connection string)."""


@dataclass(frozen=True, slots=True)
class UploadGrant:
    url: str  # the blob's URL with the SAS query: PUT the file there (x-ms-blob-type: BlockBlob)
    blob_name: str
    expires_on: datetime


class AzureUploadSigner:
    """Signs upload URLs for new blobs of `container` (by account key, or by user delegation key
    when `account_key` is None)."""

    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        *,
        account_key: str | None,
        create_container: bool = True,
    ) -> None:
        self._service = service
        self._container = container
        self._account_key = account_key
        self._ready = not create_container
        self._lock = threading.Lock()
        self._key: UserDelegationKey | None = None
        self._key_expiry: datetime | None = None

    @classmethod
    def from_connection_string(
        cls, conn: str, container: str, *, create_container: bool = True, **sdk_options: Any
    ) -> AzureUploadSigner:
        """From a connection string that carries an AccountKey (Azurite's, a key-based account's)."""
        service = BlobServiceClient.from_connection_string(conn, **client_options(**sdk_options))
        key = getattr(service.credential, "account_key", None)
        if not key:
            raise SigningUnavailable("the storage connection string has no AccountKey to sign upload URLs")
        return cls(service, container, account_key=str(key), create_container=create_container)

    @classmethod
    def from_account_url(
        cls,
        account_url: str,
        container: str,
        *,
        credential: Any = None,
        create_container: bool = True,
        **sdk_options: Any,
    ) -> AzureUploadSigner:
        """From an account URL and a token credential (None: `DefaultAzureCredential()`, the
        managed identity in Azure): user delegation SAS."""
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        service = BlobServiceClient(account_url, credential=credential, **client_options(**sdk_options))
        return cls(service, container, account_key=None, create_container=create_container)

    @property
    def kind(self) -> str:
        """Which SAS it signs: `account-key` or `user-delegation`."""
        return "account-key" if self._account_key else "user-delegation"

    def sign_upload(self, blob_name: str, lifetime: timedelta) -> UploadGrant:
        """A URL that lets its holder create (and write) `blob_name` until `lifetime` from now."""
        if not timedelta(0) < lifetime <= MAX_LIFETIME:
            raise ValueError("an upload URL lives between 1 second and 7 days")
        self._ensure_container()
        now = datetime.now(UTC)
        expiry = (now + lifetime).replace(microsecond=0)
        account = str(self._service.account_name)
        common: dict[str, Any] = {
            "account_name": account,
            "container_name": self._container,
            "blob_name": blob_name,
            "permission": UPLOAD_PERMISSION,
            "expiry": expiry,
        }
        if self._account_key:
            sas = generate_blob_sas(account_key=self._account_key, **common)
        else:
            sas = generate_blob_sas(user_delegation_key=self._delegation_key(expiry), **common)
        url = self._service.get_blob_client(self._container, blob_name).url
        return UploadGrant(f"{url}?{sas}", blob_name, expiry)

    def close(self) -> None:
        self._service.close()

    # --- internals ---------------------------------------------------------------------------
    def _delegation_key(self, expiry: datetime) -> UserDelegationKey:
        """A user delegation key valid past `expiry`: the one in hand, or a new one."""
        with self._lock:
            if self._key is not None and self._key_expiry is not None and self._key_expiry >= expiry:
                return self._key
            now = datetime.now(UTC)
            start = now - CLOCK_SKEW
            end = max(now + KEY_LIFETIME, expiry + CLOCK_SKEW)
            end = min(end, start + MAX_LIFETIME)
            try:
                with translated(Action.READ):
                    key = self._service.get_user_delegation_key(start, end)
            except HttpResponseError as error:
                if error.status_code == 403:
                    log.error(
                        "the identity may not get a user delegation key (a role such as "
                        "Storage Blob Data Contributor on the account is needed)"
                    )
                raise
            self._key, self._key_expiry = key, end - CLOCK_SKEW
            log.info("got a user delegation key for upload URLs")
            return key

    def _ensure_container(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            with translated(Action.WRITE):
                try:
                    self._service.create_container(self._container)
                except ResourceExistsError:
                    pass
                except HttpResponseError as error:
                    if error.status_code != 403:
                        raise
                    log.warning("not allowed to create the inbox container; assuming it exists")
            self._ready = True

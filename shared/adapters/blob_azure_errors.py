"""Azure SDK errors -> the core's errors, for the Azure Blob adapter.

The SDK has already retried by its own policy (configured on the client) when an error gets here:
what is transient by then is `Unavailable` (503, the client may retry later). Errors that mean a
misconfiguration (authentication, authorisation, a malformed request) are not translated: they
reach the one place that maps unknown errors to a bare 500, and are logged there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

from azure.core.exceptions import (
    AzureError,
    DecodeError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.core.errors import Conflict, NotFound, Unavailable

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
UNAVAILABLE = "the blob storage is unavailable; retry later"


class Action(Enum):
    """What the adapter was doing: the same SDK error means different things for each."""

    READ = "read"
    WRITE = "write"


def status_of(error: AzureError) -> int | None:
    return getattr(error, "status_code", None) if isinstance(error, HttpResponseError) else None


@contextmanager
def translated(action: Action) -> Iterator[None]:
    """Run a block of SDK calls, raising the core's error for what the SDK raises."""
    try:
        yield
    except AzureError as error:
        release(getattr(error, "response", None))
        core = translate(error, action)
        if core is error:
            raise
        raise core from error


def release(response: object) -> None:
    """Close an SDK response whose body is no longer needed, returning its connection.

    (A failed streamed download keeps its connection open otherwise, until the garbage
    collector finds the error that holds it.)"""
    if response is None:
        return
    close = getattr(getattr(response, "internal_response", response), "close", None)
    if callable(close):
        close()


def translate(error: AzureError, action: Action) -> Exception:
    """The core error for an SDK error, or the SDK error itself when it is not the client's concern."""
    status = status_of(error)
    code = getattr(error, "error_code", None)
    if isinstance(error, ResourceNotFoundError) or status == 404:
        if action is Action.WRITE:  # the container is missing (create_container=False, or deleted)
            log.error("blob write failed: the container does not exist (%s)", code)
            return Unavailable("the blob storage is not ready")
        return NotFound("the stored file is missing")
    if status == 416:  # a range that starts past the end
        return NotFound("the stored file is shorter than its index says")
    if isinstance(error, ResourceModifiedError) or status == 412:
        if action is Action.READ:  # the blob was replaced between two ranges of one read
            log.warning("blob read failed: the blob changed while it was read")
            return Unavailable("the stored file changed while it was read; retry")
        return Conflict("the blob already exists")
    if isinstance(error, ResourceExistsError) or status == 409:
        return Conflict("the blob already exists")
    if (
        isinstance(error, (ServiceRequestError, ServiceResponseError, DecodeError))
        or status in TRANSIENT_STATUS
    ):
        kind = type(error).__name__
        log.warning("blob storage %s failed after retries: %s (%s)", action.value, kind, status)
        return Unavailable(UNAVAILABLE)
    return error

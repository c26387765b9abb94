"""The error tree of the core: each error carries its HTTP status and a client-safe message.

Messages must never contain patient data or internals; they are sent to clients as they are.
"""

from __future__ import annotations


class DicomwebError(Exception):
    """Base of every error the server answers with a status other than 500."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DicomwebError):
    status = 400


class NotFound(DicomwebError):
    status = 404


class NotAcceptable(DicomwebError):
    status = 406


class Conflict(DicomwebError):
    status = 409


class PayloadTooLarge(DicomwebError):
    status = 413


class UnsupportedMediaType(DicomwebError):
    status = 415


class Unavailable(DicomwebError):
    """A backing service is down or throttling; the client may retry."""

    status = 503

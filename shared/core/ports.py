"""The ports: small protocols that the adapters implement.

Adapters translate their vendor's errors into the core's (`NotFound`, `Conflict`, `Unavailable`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import BinaryIO, Protocol

from shared.core.changefeed import ChangeFeedEntry, ChangeFeedQuery
from shared.core.events import DicomEvent
from shared.core.model import InstanceRecord, PendingInstance, SearchHit, StoredInstance
from shared.core.query import Query


class BlobStore(Protocol):
    def put(self, key: str, data: BinaryIO, *, overwrite: bool = False) -> int:
        """Write `data` (read to its end) under `key` and return its size.

        Conflict if the key exists and `overwrite` is false."""

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the blob (the caller closes it). NotFound if missing."""

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`. NotFound if missing."""

    def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys that start with `prefix`."""


class MetadataIndex(Protocol):
    def begin_instance(self, record: InstanceRecord, *, replace: bool) -> PendingInstance:
        """Record a pending instance. Conflict if it exists (committed) and not `replace`."""

    def commit_instance(self, record: InstanceRecord, pending: PendingInstance) -> None:
        """Make the pending instance visible. Conflict if a concurrent store won."""

    def abort_instance(self, pending: PendingInstance) -> None:
        """Forget a pending instance (its files are deleted by the caller)."""

    def begin_instances(
        self, records: Sequence[InstanceRecord], *, replace: bool
    ) -> list[PendingInstance | Exception]:
        """`begin_instance` for each record, in order, together where the index can (one transaction).

        Each record gets its pending instance, or in its place the exception (Conflict,
        Unavailable...) that `begin_instance` would have raised for it; this never raises."""

    def commit_instances(
        self, items: Sequence[tuple[InstanceRecord, PendingInstance]]
    ) -> list[Exception | None]:
        """`commit_instance` for each item, in order, together where the index can.

        Each item gets None (now visible) or the exception `commit_instance` would have raised
        (then it is still pending); this never raises."""

    def find_instances(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        """Committed instances of a study, series or one instance, in a stable order."""

    def search(self, query: Query) -> list[SearchHit]:
        """QIDO-RS: the matching studies, series or instances, paged by the query's limit and offset."""

    def delete(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        """Remove committed instances from the index and return what was removed (for file cleanup)."""

    def read_changes(self, query: ChangeFeedQuery) -> list[ChangeFeedEntry]:
        """Change feed entries after `query.offset` (a sequence), in sequence order, within the window."""

    def latest_change(self) -> ChangeFeedEntry | None:
        """The newest change feed entry."""

    def unpublished_changes(self, limit: int = 100) -> list[ChangeFeedEntry]:
        """Entries whose event has not been acknowledged by the event queue yet, oldest first.

        Their `state` need not be computed (an event does not carry it)."""

    def mark_published(self, sequences: Sequence[int]) -> None:
        """Record that the events of these entries were published."""

    def quiet_studies(self, cutoff: datetime, limit: int) -> list[tuple[str, int, datetime]]:
        """Studies whose last change is older than `cutoff` and not announced stable since it.

        Each as (study UID, its last change's sequence, that change's time), oldest change first."""

    def mark_study_stable(self, study: str, sequence: int) -> None:
        """Record that the study was announced stable as of its change `sequence` (never lowers it)."""


class EventQueue(Protocol):
    def publish(self, events: Sequence[DicomEvent]) -> None:
        """Send the events in order; return only once the queue has accepted them all.

        Raises Unavailable when it cannot: the change feed still holds them, to publish later."""

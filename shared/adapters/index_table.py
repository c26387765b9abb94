"""MetadataIndex on Azure Table Storage (azure-data-tables): Azure Storage accounts and Azurite.

The table design and the cost of each query shape are written down in docs/table-index.md. In
short: a partition per study holds its study, series and instance rows (so a study's listing,
commit and delete stay in one partition and its counts change in one transaction); a Uids table
finds the study of a SOP Instance / Series Instance UID; a Keys table holds covering index rows for
the common QIDO keys. Nothing connects before the first call; the tables are created then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from azure.data.tables import TableServiceClient

from shared.adapters import index_table_changes as changes
from shared.adapters import index_table_stability as stability
from shared.adapters import index_table_write as write
from shared.adapters.index_table_delete import delete, instance_rows
from shared.adapters.index_table_rows import COMMITTED, instance_sort, series_sort, stored_instance, study_pk
from shared.adapters.index_table_search import search
from shared.adapters.index_table_store import Tables, check_name, key
from shared.adapters.index_table_write import Scope
from shared.core.batch import begin_each, commit_each
from shared.core.changefeed import ChangeFeedEntry, ChangeFeedQuery
from shared.core.model import InstanceRecord, PendingInstance, SearchHit, StoredInstance
from shared.core.query import Query

log = logging.getLogger(__name__)


class TableMetadataIndex:
    """The metadata index on four tables, `<prefix>Studies`, `<prefix>Uids`, `<prefix>Keys` and
    `<prefix>Changes` (the change feed)."""

    def __init__(
        self, service: Callable[[], TableServiceClient], *, prefix: str = "dicom", partition: str = "default"
    ) -> None:
        if not partition or len(partition) > 64:
            raise ValueError("the partition name must have 1 to 64 characters")
        self._tables = Tables(service, check_name(prefix, "the table prefix"))
        self._scope = Scope(self._tables, key(partition), partition)

    @classmethod
    def from_connection_string(
        cls, conn: str, *, prefix: str = "dicom", partition: str = "default", **client_kwargs: Any
    ) -> TableMetadataIndex:
        """An index on the account of a connection string (Azurite, `AzureWebJobsStorage`)."""
        return cls(
            lambda: TableServiceClient.from_connection_string(conn, **client_kwargs),
            prefix=prefix,
            partition=partition,
        )

    @classmethod
    def from_account_url(
        cls,
        url: str,
        *,
        credential: Any = None,
        prefix: str = "dicom",
        partition: str = "default",
        **client_kwargs: Any,
    ) -> TableMetadataIndex:
        """An index on `https://<account>.table.core.windows.net`; without a credential, the
        managed identity or developer login that DefaultAzureCredential finds."""

        def service() -> TableServiceClient:
            found = credential
            if found is None:
                from azure.identity import DefaultAzureCredential

                found = DefaultAzureCredential()
            return TableServiceClient(endpoint=url, credential=found, **client_kwargs)

        return cls(service, prefix=prefix, partition=partition)

    def close(self) -> None:
        self._tables.close()

    # --- store -----------------------------------------------------------------------------------
    def begin_instance(self, record: InstanceRecord, *, replace: bool) -> PendingInstance:
        return write.begin(self._scope, record, replace)

    def commit_instance(self, record: InstanceRecord, pending: PendingInstance) -> None:
        write.commit(self._scope, record, pending)

    def abort_instance(self, pending: PendingInstance) -> None:
        write.abort(self._scope, pending)

    # Table storage has no transaction across partitions: a batch is its instances one by one.
    def begin_instances(
        self, records: Sequence[InstanceRecord], *, replace: bool
    ) -> list[PendingInstance | Exception]:
        return begin_each(self, records, replace=replace)

    def commit_instances(
        self, items: Sequence[tuple[InstanceRecord, PendingInstance]]
    ) -> list[Exception | None]:
        return commit_each(self, items)

    # --- read --------------------------------------------------------------------------------------
    def find_instances(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        pk = study_pk(self._scope.partition, study)
        rows = [r for r in instance_rows(self._scope, pk, series, instance) if r["s"] == COMMITTED]
        if not rows:
            return []
        series_rows = self._tables.prefix(Tables.STUDIES, pk, "R|", select=["se", "num", "c"])
        order = {r["se"]: series_sort(r) for r in series_rows}
        rows.sort(key=lambda r: instance_sort(order, r))
        return [stored_instance(study, r) for r in rows]

    def search(self, query: Query) -> list[SearchHit]:
        return search(self._scope, query)

    def delete(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        rows = delete(self._scope, study, series, instance)
        return [stored_instance(study, r) for r in rows]

    # --- change feed (index_table_changes) ----------------------------------------------------------
    def read_changes(self, query: ChangeFeedQuery) -> list[ChangeFeedEntry]:
        return changes.read_changes(self._scope, query)

    def latest_change(self) -> ChangeFeedEntry | None:
        return changes.latest_change(self._scope)

    def unpublished_changes(self, limit: int = 100) -> list[ChangeFeedEntry]:
        return changes.unpublished_changes(self._scope, limit)

    def mark_published(self, sequences: Sequence[int]) -> None:
        changes.mark_published(self._scope, sequences)

    # --- study-stable debounce (index_table_stability) ----------------------------------------------
    def quiet_studies(self, cutoff: datetime, limit: int) -> list[tuple[str, int, datetime]]:
        return stability.quiet_studies(self._scope, cutoff, limit)

    def mark_study_stable(self, study: str, sequence: int) -> None:
        stability.mark_study_stable(self._scope, study, sequence)

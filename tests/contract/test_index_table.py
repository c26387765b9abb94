"""The Table index beyond the MetadataIndex contract: keys and OData filters that quotes and odd
characters cannot break, transactions within the 100-operation limit, big attributes split across
properties, and the secondary rows (Keys, Uids) kept in step with updates and deletes."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters import index_table_store
from shared.adapters.index_table import TableMetadataIndex
from shared.adapters.index_table_store import END, key
from shared.core.attributes import Level
from shared.core.errors import PayloadTooLarge, Unavailable
from shared.core.model import InstanceRecord, InstanceUids
from tests.contract.records import make_record, query, stored, uid
from tests.services import azurite

ODD = [
    "O'Brien",
    "''",
    "a' or PartitionKey ne '",
    'say "hi"',
    "slash/and/more",
    "hash#question?",
    "pipe|tilde~bang!",
    "percent%_under",
    "tab\there",
    "\u00fcml\u00e4ut",
    "\u5c71\u7530",
    "emoji\U0001f600",
    "@at @pk",
]


ODD_KEYS = [*ODD, "back\\slash", "nul\0and\x7fdel\x85"]


# --- keys (no service needed) -------------------------------------------------------------------


@pytest.mark.parametrize("value", ODD_KEYS, ids=range(len(ODD_KEYS)))
def test_a_key_part_holds_only_characters_table_keys_allow(value: str) -> None:
    encoded = key(value)
    assert encoded.isascii() and encoded.isprintable()
    assert not set(encoded) & set("/\\#?|~")
    assert all(key(value[:n]) == encoded[: len(key(value[:n]))] for n in range(len(value)))


def test_key_parts_of_different_values_differ_and_prefixes_stay_prefixes() -> None:
    values = [*ODD_KEYS, *(v + "x" for v in ODD_KEYS), "!", "!000021", "a|b", "a!00007Cb"]
    assert len({key(v) for v in values}) == len(values)
    for value in values:
        for other in values:
            inside = key(value) <= key(other) < key(value) + END
            assert inside == other.startswith(value), (value, other)


def test_a_long_key_part_is_cut_at_a_character() -> None:
    encoded = key("\u5c71" * 500)
    assert len(encoded) <= index_table_store.MAX_KEY_VALUE
    assert encoded == "!005C71" * (len(encoded) // 7)


@pytest.mark.parametrize(
    "prefix", ["", "1abc", "a-b", "a_b", "x" * 51], ids=["empty", "digit", "dash", "under", "long"]
)
def test_an_invalid_table_prefix_is_refused_at_construction(prefix: str) -> None:
    with pytest.raises(ValueError):
        TableMetadataIndex.from_connection_string("UseDevelopmentStorage=true", prefix=prefix)


def test_nothing_connects_before_the_first_call_and_an_unreachable_service_is_unavailable() -> None:
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    index = TableMetadataIndex.from_connection_string(conn, retry_total=0)
    with pytest.raises(Unavailable):
        index.find_instances(uid(1))
    lazy = TableMetadataIndex.from_account_url("https://nowhere.invalid", credential=object())
    lazy.close()


# --- on Azurite -----------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"x{uuid.uuid4().hex[:16]}"
    yield name
    with TableServiceClient.from_connection_string(azurite()) as service:
        for table in ("Studies", "Uids", "Keys", "Changes"):
            service.delete_table(name + table)


@pytest.fixture
def index(prefix: str) -> Iterator[TableMetadataIndex]:
    found = TableMetadataIndex.from_connection_string(azurite(), prefix=prefix)
    yield found
    found.close()


def rows(prefix: str, table: str) -> list[dict[str, Any]]:
    with TableServiceClient.from_connection_string(azurite()) as service:
        return [dict(e) for e in service.get_table_client(prefix + table).list_entities()]


def record(study: str, series: str, instance: str | None = None, **keywords: Any) -> InstanceRecord:
    defaults: dict[str, Any] = {"PatientName": "Doe^Jane", "PatientID": "P1", "Modality": "CT"}
    return make_record(InstanceUids(study, series, instance or uid()), **{**defaults, **keywords})


def store(index: TableMetadataIndex, rec: InstanceRecord, *, replace: bool = False) -> None:
    index.commit_instance(rec, index.begin_instance(rec, replace=replace))


def found(index: TableMetadataIndex, level: Level, query_string: str) -> set[str]:
    return {h.study for h in index.search(query(level, query_string))}


@pytest.mark.parametrize("value", ODD, ids=range(len(ODD)))
def test_quotes_and_odd_characters_in_values_find_exactly_their_study(
    index: TableMetadataIndex, value: str
) -> None:
    mine, other = uid(), uid()
    store(index, record(mine, uid(), PatientID=value, AccessionNumber=value[:16], StudyDescription=value))
    store(index, record(other, uid(), PatientID=value + "x", AccessionNumber="plain"))
    assert found(index, Level.STUDY, f"PatientID={value}") == {mine}
    assert found(index, Level.STUDY, f"AccessionNumber={value[:16]}") == {mine}
    assert found(index, Level.STUDY, f"StudyDescription={value}") == {mine}
    assert found(index, Level.STUDY, f"PatientID={value}*") == {mine, other}
    assert found(index, Level.SERIES, f"PatientID={value}") == {mine}


@pytest.mark.parametrize(
    "name", ["O'Brien^Mary Ann", "D'Arcy^J'o", "X'^'Y=\u5c71'^\u7530", "''^''"], ids=range(4)
)
def test_quotes_in_person_names_for_single_wildcard_and_fuzzy_matching(
    index: TableMetadataIndex, name: str
) -> None:
    study = uid()
    store(index, record(study, uid(), PatientName=name))
    store(index, record(uid(), uid(), PatientName="Other^Name"))
    first = name.split("^")[0]
    assert found(index, Level.STUDY, f"PatientName={name}") == {study}
    assert found(index, Level.STUDY, f"PatientName={first}*") == {study}
    assert found(index, Level.STUDY, f"PatientName={first}&fuzzymatching=true") == {study}


def test_a_study_of_250_instances_is_deleted_in_transactions_of_at_most_100_operations(
    index: TableMetadataIndex, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series = uid(), [uid(), uid(), uid()]
    records = [record(study, series[n % 3], InstanceNumber=n) for n in range(250)]
    for rec in records:
        store(index, rec)
    sizes: list[int] = []
    transact = index_table_store.Tables.transact

    def spy(self: index_table_store.Tables, table: str, operations: list[tuple[Any, ...]]) -> Any:
        sizes.append(len(operations))
        return transact(self, table, operations)

    monkeypatch.setattr(index_table_store.Tables, "transact", spy)
    removed = index.delete(study)
    assert sorted(s.uids.instance for s in removed) == sorted(r.uids.instance for r in records)
    assert len(sizes) >= 3 and max(sizes) <= 100
    assert index.find_instances(study) == []
    assert index.search(query(Level.STUDY)) == []
    assert rows(prefix, "Studies") == [] and rows(prefix, "Uids") == [] and rows(prefix, "Keys") == []


def test_concurrent_commits_into_one_study_keep_every_count(prefix: str) -> None:
    """Each commit changes the study row (optimistic concurrency): losers re-read and retry."""
    clients = [TableMetadataIndex.from_connection_string(azurite(), prefix=prefix) for _ in range(8)]
    study, series = uid(), [uid(), uid()]
    records = [
        record(study, series[n % 2], InstanceNumber=n, Modality=["CT", "MR"][n % 2]) for n in range(40)
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store(clients[n % 8], records[n]), range(40)))
    [hit] = clients[0].search(query(Level.STUDY))
    assert (hit.attrs["00201206"]["Value"], hit.attrs["00201208"]["Value"]) == ([2], [40])
    assert hit.attrs["00080061"]["Value"] == ["CT", "MR"]
    assert sorted(h.attrs["00201209"]["Value"][0] for h in clients[1].search(query(Level.SERIES))) == [20, 20]
    assert len(clients[2].find_instances(study)) == 40
    for client in clients:
        client.close()


def test_a_series_delete_keeps_the_counts_right_across_batches(index: TableMetadataIndex) -> None:
    study, big, small = uid(), uid(), uid()
    for n in range(130):
        store(index, record(study, big, InstanceNumber=n))
    store(index, record(study, small, Modality="MR"))
    assert len(index.delete(study, big)) == 130
    [hit] = index.search(query(Level.STUDY))
    assert hit.attrs["00201206"]["Value"] == [1] and hit.attrs["00201208"]["Value"] == [1]
    assert hit.attrs["00080061"]["Value"] == ["MR"]


def test_a_name_of_many_words_spreads_its_key_rows_over_several_transactions(
    index: TableMetadataIndex, prefix: str
) -> None:
    words = [f"W{n:03d}" for n in range(150)]
    study = uid()
    store(index, record(study, uid(), PatientName=" ".join(words) + "^Given"))
    assert found(index, Level.STUDY, "PatientName=w149&fuzzymatching=true") == {study}
    assert len([r for r in rows(prefix, "Keys") if r["PartitionKey"].endswith("|pw")]) == 151
    index.delete(study)
    assert rows(prefix, "Keys") == []


def _key_values(prefix: str, kind: str) -> set[str]:
    return {r["RowKey"].split("|")[0] for r in rows(prefix, "Keys") if r["PartitionKey"].endswith("|" + kind)}


def test_changed_study_attributes_move_its_key_rows(index: TableMetadataIndex, prefix: str) -> None:
    study, series = uid(), uid()
    first = record(study, series, PatientID="OLD-ID", PatientName="Old^Name", AccessionNumber="ACC1")
    store(index, first)
    assert _key_values(prefix, "pid") == {"OLD-ID"}
    replaced = dataclasses.replace(
        record(study, series, first.uids.instance, PatientID="NEW-ID", PatientName="New^Name"),
        version="v2",
    )
    store(index, replaced, replace=True)
    assert found(index, Level.STUDY, "PatientID=OLD-ID") == set()
    assert found(index, Level.STUDY, "PatientID=NEW-ID") == {study}
    assert found(index, Level.STUDY, "PatientName=Old*") == set()
    assert found(index, Level.STUDY, "AccessionNumber=ACC1") == set()
    assert _key_values(prefix, "pid") == {"NEW-ID"}
    assert _key_values(prefix, "pn") == {"NEW NAME"}
    assert _key_values(prefix, "pw") == {"NEW", "NAME"}
    assert _key_values(prefix, "acc") == set()


def test_a_changed_modality_moves_the_study_between_modality_rows(
    index: TableMetadataIndex, prefix: str
) -> None:
    study, series = uid(), uid()
    rec = record(study, series, Modality="CT")
    store(index, rec)
    store(
        index,
        dataclasses.replace(record(study, series, rec.uids.instance, Modality="MR"), version="v2"),
        replace=True,
    )
    assert found(index, Level.STUDY, "ModalitiesInStudy=CT") == set()
    assert found(index, Level.STUDY, "ModalitiesInStudy=MR") == {study}
    assert found(index, Level.SERIES, "Modality=MR") == {study}
    assert _key_values(prefix, "mod") == {"MR"}


def test_deleting_series_and_instances_removes_their_uid_rows(index: TableMetadataIndex, prefix: str) -> None:
    study, kept, dropped = uid(), uid(), uid()
    a, b, c = record(study, kept), record(study, kept), record(study, dropped, Modality="MR")
    for rec in (a, b, c):
        store(index, rec)
    assert len(rows(prefix, "Uids")) == 3 + 2  # three SOP Instance claims, two series lookups
    index.delete(study, dropped)
    index.delete(study, kept, a.uids.instance)
    assert {r["PartitionKey"].split("|")[-1] for r in rows(prefix, "Uids")} == {b.uids.instance, kept}
    assert _key_values(prefix, "mod") == {"CT"}
    assert index.find_instances(study) == [stored(b)]


def test_attributes_over_64_kb_are_split_and_come_back_whole(index: TableMetadataIndex) -> None:
    rec = record(uid(), uid())
    comments = {"00204000": {"vr": "LT", "Value": ["\u00e9\u5c71" * 25_000]}}  # 300 000 characters as JSON
    rec = dataclasses.replace(
        rec,
        study_attrs={**rec.study_attrs, "00324000": {"vr": "LT", "Value": ["s" * 70_000]}},
        instance_attrs={**rec.instance_attrs, **comments},
    )
    store(index, rec)
    [hit] = index.search(query(Level.INSTANCE, "includefield=all"))
    assert hit.attrs["00204000"] == comments["00204000"]
    assert hit.attrs["00324000"]["Value"] == ["s" * 70_000]
    [study_hit] = index.search(query(Level.STUDY))
    assert study_hit.attrs.items() >= rec.study_attrs.items()


def test_attributes_beyond_what_one_entity_holds_are_too_large(index: TableMetadataIndex) -> None:
    rec = record(uid(), uid())
    rec = dataclasses.replace(rec, instance_attrs={"00204000": {"vr": "LT", "Value": ["x" * 1_000_000]}})
    pending = index.begin_instance(rec, replace=False)
    with pytest.raises(PayloadTooLarge):
        index.commit_instance(rec, pending)
    index.abort_instance(pending)
    assert index.find_instances(rec.uids.study) == []


def test_partitions_of_one_account_are_separate(prefix: str) -> None:
    conn = azurite()
    left = TableMetadataIndex.from_connection_string(conn, prefix=prefix, partition="left")
    right = TableMetadataIndex.from_connection_string(conn, prefix=prefix, partition="right|odd'/")
    rec = record(uid(), uid())
    store(left, rec)
    store(right, rec)  # the same SOP Instance UID in another partition is no conflict
    assert left.find_instances(rec.uids.study) == [stored(rec)]
    assert len(right.delete(rec.uids.study)) == 1
    assert left.find_instances(rec.uids.study) == [stored(rec)]
    assert [h.study for h in left.search(query(Level.STUDY, "PatientID=P1"))] == [rec.uids.study]
    assert right.search(query(Level.STUDY, "PatientID=P1")) == []

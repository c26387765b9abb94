"""shared.core.batch: the batch calls, item by item, for an index without a cheaper way."""

from __future__ import annotations

from typing import Any

from shared.core.batch import begin_each, commit_each
from shared.core.errors import Conflict, Unavailable
from shared.core.model import InstanceRecord, InstanceUids, PendingInstance


def record(n: int) -> InstanceRecord:
    return InstanceRecord(
        uids=InstanceUids("1.2", "1.2.3", f"1.2.3.{n}"),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        transfer_syntax="1.2.840.10008.1.2.1",
        version=f"2-{n:016x}",
        size=10,
        number_of_frames=0,
        study_attrs={},
        series_attrs={},
        instance_attrs={},
    )


class Index:
    """Answers item n with `answers[n]`: an exception to raise, or None for success; counts calls."""

    def __init__(self, answers: list[Exception | None]) -> None:
        self.answers = answers
        self.calls = 0

    def _answer(self, n: int) -> None:
        self.calls += 1
        if (error := self.answers[n]) is not None:
            raise error

    def begin_instance(self, rec: InstanceRecord, *, replace: bool) -> PendingInstance:
        self._answer(int(rec.uids.instance.rsplit(".", 1)[1]))
        return PendingInstance(rec.uids, rec.version, None)

    def commit_instance(self, rec: InstanceRecord, pending: PendingInstance) -> None:
        self._answer(int(rec.uids.instance.rsplit(".", 1)[1]))


def names(results: list[Any]) -> list[str]:
    return [type(r).__name__ for r in results]


def test_each_item_gets_its_own_answer_in_order() -> None:
    index = Index([None, Conflict("exists"), None])
    records = [record(n) for n in range(3)]
    assert names(begin_each(index, records, replace=False)) == [
        "PendingInstance",
        "Conflict",
        "PendingInstance",
    ]  # type: ignore[arg-type]
    pendings = [PendingInstance(r.uids, r.version, None) for r in records]
    assert names(commit_each(index, list(zip(records, pendings, strict=True)))) == [
        "NoneType",
        "Conflict",
        "NoneType",
    ]  # type: ignore[arg-type]


def test_once_the_index_is_unavailable_the_items_left_get_that_answer_without_a_call() -> None:
    index = Index([None, Unavailable("down"), None, None])
    records = [record(n) for n in range(4)]
    assert names(begin_each(index, records, replace=False)) == ["PendingInstance"] + ["Unavailable"] * 3  # type: ignore[arg-type]
    assert index.calls == 2
    index.calls = 0
    pendings = [PendingInstance(r.uids, r.version, None) for r in records]
    assert (
        names(commit_each(index, list(zip(records, pendings, strict=True))))
        == ["NoneType"] + ["Unavailable"] * 3
    )  # type: ignore[arg-type]
    assert index.calls == 2

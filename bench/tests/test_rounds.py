"""`--rounds`: the servers' order per round, the document and table for one round and for several.

`bench_server` and the corpus are replaced by fakes: no server is started, no data generated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import run
from bench.report import median_rows, metric_rows, ratio, table
from bench.scenarios import Metric

LEGACY_KEYS = {
    "benchmark",
    "started",
    "finished",
    "mode",
    "seed",
    "scenarios",
    "plan",
    "host",
    "baseline",
    "ratio_note",
    "servers",
    "metrics",
}


class FakeCorpus:
    def __init__(self, seed: int, plan: Any, keep: bool = False) -> None:
        self.root = Path("/nonexistent-fake-corpus")
        self.prepared = 0

    def prepare(self, scenarios: list[str]) -> None:
        self.prepared += 1

    def close(self) -> None:
        pass


class FakeServers:
    """Stands in for `bench_server`: records the calls; each call's metrics come from `values`."""

    def __init__(
        self,
        values: dict[str, list[dict[str, Metric]]],
        errors: dict[str, list[list[str]]],
        store_root: Path | None = None,
    ) -> None:
        self.values = values
        self.errors = errors
        self.calls: list[str] = []
        self.store_root = store_root
        self.stores: list[Path] = []
        self.existing_at_call: list[list[Path]] = []  # the stores on disk as each server starts

    def __call__(self, name: str, corpus: Any, scenarios: list[str], stores: list[Path]) -> dict[str, Any]:
        k = sum(1 for c in self.calls if c == name)
        self.calls.append(name)
        if self.store_root is not None:  # as bench_server does: a store left for main to delete
            self.existing_at_call.append([p for p in self.stores if p.exists()])
            store = self.store_root / f"{name}-{k}"
            (store / "data").mkdir(parents=True)
            (store / "data" / "instance.dcm").write_bytes(b"x")
            self.stores.append(store)
            stores.append(store)
        return {
            "metrics": dict(self.values[name][k]),
            "errors": list(self.errors.get(name, [[]] * (k + 1))[k]),
            "version": f"{name} 1.0",
            "root": f"http://127.0.0.1/{name}",
            "details": {"phases": {"stow": {"seconds": 1.0 + k}}},
            "store_on_disk_mb": 2.0,
        }


def _stow(value: float | None, failures: int = 0) -> Metric:
    return Metric(value, "instances/s", "higher", 20, failures)


def _lat(value: float | None) -> Metric:
    return Metric(value, "ms", "lower", 15, 0)


def _run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fake: FakeServers,
    *extra: str,
) -> tuple[int, dict[str, Any], str]:
    monkeypatch.setattr(run, "bench_server", fake)
    monkeypatch.setattr(run, "Corpus", FakeCorpus)
    monkeypatch.setattr(run, "find_orthanc", lambda: "/usr/sbin/Orthanc")
    monkeypatch.setattr(run, "find_plugin_dir", lambda: "/usr/share/orthanc/plugins")
    argv = ["--quick", "--baseline", "orthanc", "--only", "stow", "--seed", "5"]
    code = run.main([*argv, "--results-dir", str(tmp_path), *extra])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert json.loads(next(tmp_path.glob("*.json")).read_text()) == doc  # the same document on disk
    return code, doc, err


def test_one_round_keeps_the_document_and_table_of_a_single_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ours = {"s": _stow(150.0), "q": _lat(4.0)}
    orthanc = {"s": _stow(100.0), "q": _lat(8.0)}
    fake = FakeServers({"ours": [ours], "orthanc": [orthanc]}, {})
    code, doc, err = _run(monkeypatch, capsys, tmp_path, fake)
    assert code == 0
    assert fake.calls == ["ours", "orthanc"]
    assert set(doc) == LEGACY_KEYS
    assert (doc["benchmark"], doc["mode"], doc["seed"], doc["baseline"]) == (
        "dicomweb-bench/1",
        "quick",
        5,
        "orthanc",
    )
    assert list(doc["servers"]) == ["ours", "orthanc"]
    assert doc["servers"]["ours"] == {
        "errors": [],
        "version": "ours 1.0",
        "root": "http://127.0.0.1/ours",
        "details": {"phases": {"stow": {"seconds": 1.0}}},
        "store_on_disk_mb": 2.0,
    }
    rows = metric_rows({"ours": ours, "orthanc": orthanc}, baseline="orthanc")
    assert doc["metrics"] == rows
    assert doc["metrics"][0] == {
        "name": "s",
        "unit": "instances/s",
        "better": "higher",
        "values": {"ours": 150.0, "orthanc": 100.0},
        "ratio": 1.5,
    }
    assert table(rows, ["ours", "orthanc"], True) in err
    assert "median" not in err and "round 1" not in err


def test_one_round_with_a_failure_or_an_error_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake = FakeServers(
        {"ours": [{"s": _stow(150.0, failures=2)}], "orthanc": [{"s": _stow(100.0)}]},
        {"orthanc": [["stow: boom"]]},
    )
    code, doc, err = _run(monkeypatch, capsys, tmp_path, fake)
    assert code == 1
    assert doc["metrics"][0]["failures"] == {"ours": "2/20"}
    assert "orthanc: ERROR stow: boom" in err


@pytest.mark.parametrize(
    ("servers", "rounds", "expected"),
    [
        (
            ["ours", "orthanc"],
            4,
            ["ours", "orthanc", "orthanc", "ours", "ours", "orthanc", "orthanc", "ours"],
        ),
        (["orthanc", "ours"], 2, ["orthanc", "ours", "ours", "orthanc"]),
        (["ours"], 3, ["ours", "ours", "ours"]),
    ],
    ids=["ours-first", "orthanc-first", "alone"],
)
def test_round_order_alternates(servers: list[str], rounds: int, expected: list[str]) -> None:
    assert [s for k in range(rounds) for s in run.round_order(servers, k)] == expected


def test_median_rows_take_each_servers_median_and_the_median_of_per_round_ratios() -> None:
    per_round = [
        {"ours": {"s": _stow(150.0), "q": _lat(4.0)}, "orthanc": {"s": _stow(100.0), "q": _lat(8.0)}},
        {"ours": {"s": _stow(100.0), "q": _lat(6.0)}, "orthanc": {"s": _stow(125.0), "q": _lat(6.0)}},
        {"ours": {"s": _stow(120.0), "q": _lat(5.0)}, "orthanc": {"s": _stow(80.0), "q": _lat(4.0)}},
    ]
    stow, lat = median_rows(per_round, baseline="orthanc")
    assert stow == {
        "name": "s",
        "unit": "instances/s",
        "better": "higher",
        "values": {"ours": 120.0, "orthanc": 100.0},
        "per_round": {"ours": [150.0, 100.0, 120.0], "orthanc": [100.0, 125.0, 80.0]},
        "ratio": 1.5,  # median of 1.5, 0.8, 1.5: not 120/100, the ratio of the medians
        "ratio_per_round": [1.5, 0.8, 1.5],
        "ratio_range": [0.8, 1.5],
    }
    # lower is better: the ratio is orthanc/ours, as in a single run
    assert lat["values"] == {"ours": 5.0, "orthanc": 6.0}
    assert lat["ratio_per_round"] == [2.0, 1.0, 0.8]
    assert (lat["ratio"], lat["ratio_range"]) == (1.0, [0.8, 2.0])
    assert [ratio("lower", o, b) for o, b in [(4.0, 8.0), (6.0, 6.0), (5.0, 4.0)]] == lat["ratio_per_round"]


def test_median_rows_with_an_even_number_of_rounds_average_the_middle_two() -> None:
    per_round = [
        {"ours": {"m": Metric(v, "MB", "lower")}, "orthanc": {"m": Metric(b, "MB", "lower")}}
        for v, b in [(100.0, 300.0), (200.0, 200.0), (400.0, 100.0), (50.0, 100.0)]
    ]
    (row,) = median_rows(per_round, baseline="orthanc")
    assert row["values"] == {"ours": 150.0, "orthanc": 150.0}
    assert row["ratio_per_round"] == [3.0, 1.0, 0.25, 2.0]
    assert (row["ratio"], row["ratio_range"]) == (1.5, [0.25, 3.0])


def test_median_rows_leave_out_missing_rounds_and_sum_failures() -> None:
    per_round: list[dict[str, dict[str, Metric]]] = [
        {"ours": {"s": _stow(100.0, failures=1)}, "orthanc": {"s": _stow(50.0)}},
        {"ours": {}, "orthanc": {"s": _stow(60.0)}},  # ours did not start in round 2
        {"ours": {"s": _stow(None, failures=20)}, "orthanc": {"s": _stow(70.0, failures=3)}},
    ]
    (row,) = median_rows(per_round, baseline="orthanc")
    assert row["per_round"] == {"ours": [100.0, None, None], "orthanc": [50.0, 60.0, 70.0]}
    assert row["values"] == {"ours": 100.0, "orthanc": 60.0}
    assert row["failures"] == {"ours": "21/40", "orthanc": "3/60"}
    assert (row["ratio"], row["ratio_per_round"], row["ratio_range"]) == (2.0, [2.0, None, None], [2.0, 2.0])


def test_median_rows_without_a_baseline_have_no_ratio() -> None:
    (row,) = median_rows([{"ours": {"s": _stow(1.0)}}, {"ours": {"s": _stow(3.0)}}])
    assert row["values"] == {"ours": 2.0}
    assert not {"ratio", "ratio_per_round", "ratio_range"} & set(row)


def test_table_of_several_rounds_shows_medians_and_the_ratio_range() -> None:
    rows = median_rows(
        [
            {"ours": {"s": _stow(107.0)}, "orthanc": {"s": _stow(100.0)}},
            {"ours": {"s": _stow(92.0)}, "orthanc": {"s": _stow(100.0)}},
            {"ours": {"s": _stow(121.0)}, "orthanc": {"s": _stow(100.0)}},
        ],
        baseline="orthanc",
    )
    header, _, line = table(rows, ["ours", "orthanc"], True, rounds=3).splitlines()
    assert "ours median" in header and "of 3 rounds" in header
    assert line.split() == ["s", "instances/s", "107.0", "100.0", "1.070", "(0.920\u20131.210)"]


def test_several_rounds_alternate_the_order_and_keep_every_round(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake = FakeServers(
        {
            "ours": [{"s": _stow(v), "q": _lat(4.0)} for v in (150.0, 100.0, 120.0)],
            "orthanc": [{"s": _stow(v), "q": _lat(8.0)} for v in (100.0, 125.0, 80.0)],
        },
        {},
    )
    code, doc, err = _run(monkeypatch, capsys, tmp_path, fake, "--rounds", "3")
    assert code == 0
    assert fake.calls == ["ours", "orthanc", "orthanc", "ours", "ours", "orthanc"]
    assert set(doc) > LEGACY_KEYS
    assert [r["order"] for r in doc["rounds"]] == [
        ["ours", "orthanc"],
        ["orthanc", "ours"],
        ["ours", "orthanc"],
    ]
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    second = doc["rounds"][1]
    assert list(second["servers"]) == ["ours", "orthanc"]
    assert second["servers"]["orthanc"]["details"] == {"phases": {"stow": {"seconds": 2.0}}}
    assert "metrics" not in second["servers"]["ours"]
    assert second["metrics"] == metric_rows(
        {"ours": {"s": _stow(100.0), "q": _lat(4.0)}, "orthanc": {"s": _stow(125.0), "q": _lat(8.0)}},
        baseline="orthanc",
    )
    assert doc["servers"] == {
        "ours": {"version": "ours 1.0", "errors": []},
        "orthanc": {"version": "orthanc 1.0", "errors": []},
    }
    stow = doc["metrics"][0]
    assert (stow["values"], stow["ratio"], stow["ratio_range"]) == (
        {"ours": 120.0, "orthanc": 100.0},
        1.5,
        [0.8, 1.5],
    )
    assert table(doc["metrics"], ["ours", "orthanc"], True, rounds=3) in err


def test_an_error_or_a_failure_in_any_round_is_reported_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake = FakeServers(
        {
            "ours": [{"s": _stow(v)} for v in (150.0, 100.0)],
            "orthanc": [{"s": _stow(100.0)}, {"s": _stow(90.0, failures=1)}],
        },
        {"ours": [[], ["server exited during stow: oops"]]},
    )
    code, doc, err = _run(monkeypatch, capsys, tmp_path, fake, "--rounds", "2")
    assert code == 1
    assert "ours round 2: ERROR server exited during stow: oops" in err
    assert doc["servers"]["ours"]["errors"] == ["round 2: server exited during stow: oops"]
    assert doc["metrics"][0]["failures"] == {"orthanc": "1/40"}
    assert doc["rounds"][1]["metrics"][0]["failures"] == {"orthanc": "1/20"}


def test_rounds_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["--rounds", "0"])


@pytest.mark.parametrize("keep", [False, True])
def test_the_servers_stores_are_deleted_once_every_server_has_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, keep: bool
) -> None:
    """No server starts right after another's store was deleted (a mass delete slows the next
    server's file creation); they all go at the end, unless --keep."""
    results, stores = tmp_path / "results", tmp_path / "stores"
    fake = FakeServers(
        {"ours": [{"s": _stow(1.0)}] * 2, "orthanc": [{"s": _stow(1.0)}] * 2}, {}, store_root=stores
    )
    extra = ["--rounds", "2", *(["--keep"] if keep else [])]
    code, _doc, _err = _run(monkeypatch, capsys, results, fake, *extra)
    assert code == 0
    assert [len(existing) for existing in fake.existing_at_call] == [0, 1, 2, 3]
    assert [store.exists() for store in fake.stores] == [keep] * 4


def test_bench_server_leaves_its_store_for_later_and_flushes_writes_before_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench.servers import ServerError, ServerProcess

    events: list[str] = []

    class NotStarting(ServerProcess):
        name = "fake"

        def start(self) -> None:
            events.append("start")
            raise ServerError("does not start here")

    monkeypatch.setitem(run.SERVER_TYPES, "fake", NotStarting)
    monkeypatch.setattr(run.os, "sync", lambda: events.append("sync"))
    stores: list[Path] = []
    result = run.bench_server("fake", FakeCorpus(0, None), ["stow"], stores)
    try:
        assert result["errors"] == ["does not start here"]
        assert events == ["sync", "start"]
        assert len(stores) == 1 and stores[0].is_dir()  # stopped, not deleted
    finally:
        for store in stores:
            shutil.rmtree(store, ignore_errors=True)

"""The JSON result document and the short text table."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.scenarios import Metric

RATIO_NOTE = (
    "ratio > 1 means ours is better: for 'higher' metrics ratio = ours/baseline, "
    "for 'lower' metrics (latency, memory) ratio = baseline/ours"
)
EN_DASH = "\u2013"
ROUNDS_NOTE = (
    "values: each server's median over the rounds (per_round: every round's value); "
    "ratio: the median of the per-round ratios (ratio_per_round), ratio_range: their min and max"
)


def ratio(better: str, ours: float | None, baseline: float | None) -> float | None:
    """Ours relative to the baseline, oriented so that > 1 always means ours is better."""
    if ours is None or baseline is None or ours <= 0 or baseline <= 0:
        return None
    value = ours / baseline if better == "higher" else baseline / ours
    return round(value, 3)


def metric_rows(
    per_server: Mapping[str, Mapping[str, Metric]], ours: str = "ours", baseline: str | None = None
) -> list[dict[str, Any]]:
    """One row per metric name (first-seen order), with every server's value and the ratio."""
    names: list[str] = []
    for metrics in per_server.values():
        names += [n for n in metrics if n not in names]
    rows = []
    for name in names:
        present = [m[name] for m in per_server.values() if name in m]
        first = present[0]
        row: dict[str, Any] = {"name": name, "unit": first.unit, "better": first.better, "values": {}}
        for server, metrics in per_server.items():
            m = metrics.get(name)
            row["values"][server] = None if m is None else m.value
            if m is not None and m.failures:
                row.setdefault("failures", {})[server] = f"{m.failures}/{m.requests}"
        if baseline is not None:
            row["ratio"] = ratio(first.better, row["values"].get(ours), row["values"].get(baseline))
        rows.append(row)
    return rows


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def median_rows(
    per_round: Sequence[Mapping[str, Mapping[str, Metric]]], ours: str = "ours", baseline: str | None = None
) -> list[dict[str, Any]]:
    """One row per metric over several rounds: each server's median, and the ratio computed per round.

    `values` holds the medians (so `table` reads these rows as it reads `metric_rows`); `ratio` is the
    median of the per-round ratios, not the ratio of the medians: a round's two servers ran minutes
    apart at most, rounds may be further apart. A round without a value (failure, server down) is
    None in `per_round` and left out of the median; failures are summed over the rounds.
    """
    servers: list[str] = []
    for metrics in per_round:
        servers += [s for s in metrics if s not in servers]
    rounds = [metric_rows({s: r.get(s, {}) for s in servers}, ours, baseline) for r in per_round]
    names: list[str] = []
    for rows in rounds:
        names += [row["name"] for row in rows if row["name"] not in names]
    out = []
    for name in names:
        found = [next((r for r in rows if r["name"] == name), None) for rows in rounds]
        first = next(r for r in found if r is not None)
        per_server = {s: [None if r is None else r["values"][s] for r in found] for s in servers}
        row: dict[str, Any] = {
            "name": name,
            "unit": first["unit"],
            "better": first["better"],
            "values": {s: _median(v) for s, v in per_server.items()},
            "per_round": per_server,
        }
        for s in servers:
            counted = [m for m in (r.get(s, {}).get(name) for r in per_round) if m is not None]
            failures = sum(m.failures for m in counted)
            if failures:
                row.setdefault("failures", {})[s] = f"{failures}/{sum(m.requests for m in counted)}"
        if baseline is not None:
            ratios = [None if r is None else r["ratio"] for r in found]
            present = [r for r in ratios if r is not None]
            row["ratio"] = _median(ratios)
            row["ratio_per_round"] = ratios
            row["ratio_range"] = [min(present), max(present)] if present else None
        out.append(row)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _fmt_ratio(row: Mapping[str, Any]) -> str:
    span = row.get("ratio_range")
    if span is None:
        return _fmt(row.get("ratio"))
    return f"{_fmt(row.get('ratio'))} ({_fmt(span[0])}{EN_DASH}{_fmt(span[1])})"


def table(rows: list[dict[str, Any]], servers: list[str], with_ratio: bool, rounds: int = 1) -> str:
    """A fixed-width text table: metric, unit, each server, ratio (and failures, if any).

    With rounds > 1 (rows from `median_rows`): each server's median, and the median of the per-round
    ratios with their range: `1.07 (0.92-1.21)`, the range written with an en dash.
    """
    if rounds > 1:
        heads = [f"{s} median" for s in servers]
        ratio_head = f"ratio (>1: ours better), median (min{EN_DASH}max) of {rounds} rounds"
    else:
        heads, ratio_head = list(servers), "ratio (>1: ours better)"
    header = ["metric", "unit", *heads] + ([ratio_head] if with_ratio else []) + ["failures"]
    lines = [header]
    for row in rows:
        fails = ", ".join(f"{k} {v}" for k, v in row.get("failures", {}).items())
        cells = [row["name"], row["unit"], *(_fmt(row["values"].get(s)) for s in servers)]
        lines.append(cells + ([_fmt_ratio(row)] if with_ratio else []) + [fails])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(s.rstrip() for s in out)

"""The JSON result document and the short text table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.scenarios import Metric

RATIO_NOTE = (
    "ratio > 1 means ours is better: for 'higher' metrics ratio = ours/baseline, "
    "for 'lower' metrics (latency, memory) ratio = baseline/ours"
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


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def table(rows: list[dict[str, Any]], servers: list[str], with_ratio: bool) -> str:
    """A fixed-width text table: metric, unit, each server, ratio (and failures, if any)."""
    header = ["metric", "unit", *servers] + (["ratio (>1: ours better)"] if with_ratio else []) + ["failures"]
    lines = [header]
    for row in rows:
        fails = ", ".join(f"{k} {v}" for k, v in row.get("failures", {}).items())
        cells = [row["name"], row["unit"], *(_fmt(row["values"].get(s)) for s in servers)]
        lines.append(cells + ([_fmt(row.get("ratio"))] if with_ratio else []) + [fails])
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

"""Summaries, the printed tables, the targets from BENCHMARKS.md and the JSON results.

Speed ratios are **paired**: methods run interleaved (repeat 1 of every method, then
repeat 2 …), so each repeat of method A is compared with the same repeat of method B and
the ratio reported is the median of those per-repeat ratios. On a shared machine whose
load drifts between repeats this cancels most of the drift that a ratio of two medians
would keep. Memory figures are the maximum over the repeats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich import box
from rich.console import Console
from rich.table import Table

from common import MB, fmt_rate, median

#: Peak RSS target for replicant (BENCHMARKS.md), bytes.
RSS_LIMIT = 256 * MB
#: "the same at 5M and at 20M rows": the larger run may use at most this factor more.
RSS_SCALE_SLACK = 1.25


@dataclass
class MethodResult:
    """All repeats of one method on one dataset."""

    method: str
    rows: int
    reps: list[int] = field(default_factory=list)  #: repeat index of each measurement
    seconds: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    peak_anon: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    rss_breakdown: dict[str, float] = field(default_factory=dict)  #: of the repeat with the highest peak
    problems: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.seconds) and not self.problems and not self.errors

    @property
    def median_s(self) -> float:
        return median(self.seconds)

    @property
    def rate(self) -> float:
        s = self.median_s
        return self.rows / s if self.seconds and s > 0 else float("nan")

    @property
    def peak(self) -> int:
        return max(self.peak_rss) if self.peak_rss else 0

    def to_json(self, pipe: MethodResult | None) -> dict:
        return {
            "rows": self.rows,
            "reps": self.reps,
            "seconds": [round(s, 3) for s in self.seconds],
            "median_s": _round(self.median_s, 3),
            "rows_per_s": _round(self.rate, 0),
            "ratio_to_pipe_pk": _round(speedup(self, pipe)[0], 3),
            "peak_rss_mb": [round(p / MB, 1) for p in self.peak_rss],
            "peak_anon_rss_mb": [round(p / MB, 1) for p in self.peak_anon],
            "cpu_s": [round(c, 2) for c in self.cpu],
            "load_before": [round(x, 2) for x in self.load],
            "rss_breakdown_mb": self.rss_breakdown,
            "verified": self.ok,
            "problems": self.problems[:20],
            "errors": [e[:2000] for e in self.errors],
            "info": self.info,
        }


    @classmethod
    def from_json(cls, method: str, d: dict) -> MethodResult:
        """The inverse of :meth:`to_json` (figures as rounded there)."""
        n = len(d.get("seconds", []))
        return cls(
            method=method, rows=d["rows"], reps=d.get("reps") or list(range(n)),
            seconds=d.get("seconds", []),
            peak_rss=[int(x * MB) for x in d.get("peak_rss_mb", [])],
            peak_anon=[int(x * MB) for x in d.get("peak_anon_rss_mb", [])],
            cpu=d.get("cpu_s", []), load=d.get("load_before", []), rss_breakdown=d.get("rss_breakdown_mb", {}),
            problems=d.get("problems", []), errors=d.get("errors", []), info=d.get("info", {}),
        )


def speedup(a: MethodResult | None, b: MethodResult | None) -> tuple[float, list[float]]:
    """How many times faster ``a`` is than ``b``: the median of per-repeat ratios
    ``b.seconds[r] / a.seconds[r]`` over the repeats both have (NaN if none), and those ratios."""
    if not a or not b or not a.ok or not b.ok:
        return float("nan"), []
    mine = dict(zip(a.reps, a.seconds))
    theirs = dict(zip(b.reps, b.seconds))
    ratios = [theirs[r] / mine[r] for r in mine if r in theirs and mine[r] > 0]
    return (median(ratios) if ratios else float("nan")), ratios


def _round(x: float, nd: int):
    return None if math.isnan(x) else round(x, nd)


def dataset_table(title: str, results: dict[str, MethodResult]) -> Table:
    pipe = results.get("copy-pipe-pk")
    t = Table(title=title, box=box.MARKDOWN, title_justify="left")
    for col, justify in (("method", "left"), ("rows", "right"), ("seconds (median)", "right"),
                         ("rows/s", "right"), ("× pipe-pk (paired)", "right"), ("peak RSS MB", "right"), ("anon MB", "right"),
                         ("CPU s", "right"), ("check", "left")):
        t.add_column(col, justify=justify)
    for r in results.values():
        if r.errors and not r.seconds:
            t.add_row(r.method, f"{r.rows:,}", "-", "-", "-", "-", "-", "-", "FAILED: " + _first_line(r.errors[0]))
            continue
        ratio = speedup(r, pipe)[0]
        check = "ok" if r.ok else ("WRONG: " + r.problems[0] if r.problems else "FAILED: " + _first_line(r.errors[0]))
        if r.method == "copy-devnull":
            check = "-"
        t.add_row(r.method, f"{r.rows:,}", f"{r.median_s:.2f}", fmt_rate(r.rate),
                  "-" if math.isnan(ratio) else f"{ratio:.2f}", f"{r.peak / MB:.0f}",
                  f"{max(r.peak_anon, default=0) / MB:.0f}",
                  f"{median(r.cpu):.1f}", check)
    return t


def breakdown_lines(results: dict[str, MethodResult]) -> str:
    """One line per replicant method: where its peak RSS lived (MB, near the peak)."""
    lines = []
    for r in results.values():
        if r.method.startswith("replicant-") and r.rss_breakdown:
            b = dict(r.rss_breakdown)
            at = b.pop("at_rss", None)
            parts = ", ".join(f"{k} {v:.0f}" for k, v in b.items())
            lines.append(f"  {r.method}: peak {r.peak / MB:.0f} MB; at {at if at is not None else '?'} MB: {parts}")
    return ("RSS near the peak, MB:\n" + "\n".join(lines)) if lines else ""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:120] if text.strip() else "?"


@dataclass
class Target:
    name: str
    measured: str
    status: str  # PASS, MISS, n/a

    def to_json(self) -> dict:
        return {"target": self.name, "measured": self.measured, "status": self.status}


def _get(results: dict[str, MethodResult], method: str) -> MethodResult | None:
    r = results.get(method)
    return r if r and r.ok else None


def _speed_target(name: str, results, mine: str, theirs: str, factor: float) -> Target:
    a, b = _get(results, mine), _get(results, theirs)
    if not a or not b:
        return Target(name, f"needs {mine} and {theirs}", "n/a")
    ratio, each = speedup(a, b)
    if math.isnan(ratio):
        return Target(name, "no common repeat", "n/a")
    measured = (f"{ratio:.2f}× (per repeat {', '.join(f'{x:.2f}' for x in each)}; "
                f"medians {fmt_rate(a.rate)} vs {fmt_rate(b.rate)} rows/s)")
    floor = _get(results, "replicant-read")
    alone = speedup(floor, b)[0] if floor and mine.startswith("replicant-") else math.nan
    if not math.isnan(alone):
        measured += f"; the read alone: {alone:.2f}×"
    return Target(name, measured, "PASS" if ratio >= factor else "MISS")


def _memory_target(name: str, results, mine: str, theirs: str, fraction: float) -> Target:
    a, b = _get(results, mine), _get(results, theirs)
    if not a or not b:
        return Target(name, f"needs {mine} and {theirs}", "n/a")
    return Target(name, f"{a.peak / MB:.0f} MB vs {b.peak / MB:.0f} MB ({a.peak / b.peak:.2f})",
                  "PASS" if a.peak <= fraction * b.peak else "MISS")


def targets(ds_name: str, results: dict[str, MethodResult]) -> list[Target]:
    """The BENCHMARKS.md targets that one dataset's results can decide."""
    p = f"{ds_name}: "
    out = [
        _speed_target(p + "PG→PG merge ≥ 0.85× COPY pipe into keyed table", results,
                      "replicant-pg-merge", "copy-pipe-pk", 0.85),
        _speed_target(p + "PG→DuckDB append ≥ 1.5× dlt-connectorx append", results,
                      "replicant-duckdb-append", "dlt-duckdb-append", 1.5),
        _speed_target(p + "PG→DuckDB merge ≥ 1.5× dlt-connectorx merge", results,
                      "replicant-duckdb-merge", "dlt-duckdb-merge", 1.5),
        _memory_target(p + "PG→DuckDB append memory ≤ ¼ dlt's", results,
                       "replicant-duckdb-append", "dlt-duckdb-append", 0.25),
        _memory_target(p + "PG→DuckDB merge memory ≤ ¼ dlt's", results,
                       "replicant-duckdb-merge", "dlt-duckdb-merge", 0.25),
        _speed_target(p + "PG→PG merge into loaded target ≥ 3× dlt's", results,
                      "replicant-pg-merge-loaded", "dlt-pg-merge-loaded", 3.0),
        _speed_target(p + "PG→DuckDB merge into loaded target ≥ 3× dlt's", results,
                      "replicant-duckdb-merge-loaded", "dlt-duckdb-merge-loaded", 3.0),
    ]
    mine = [r for m, r in results.items() if m.startswith("replicant-") and r.peak_rss]
    if mine:
        worst = max(mine, key=lambda r: r.peak)
        out.append(Target(p + "replicant peak RSS ≤ 256 MB", f"max {worst.peak / MB:.0f} MB ({worst.method})",
                          "PASS" if worst.peak <= RSS_LIMIT else "MISS"))
        bad = [r.method for r in results.values() if r.method.startswith("replicant-") and not r.ok]
        out.append(Target(p + "replicant copies verified (count + checksums)",
                          "all ok" if not bad else "wrong/failed: " + ", ".join(bad),
                          "PASS" if not bad else "MISS"))
    return out


def rss_scale_targets(small: dict[str, MethodResult], large: dict[str, MethodResult]) -> list[Target]:
    """Peak RSS at the large scale must be ≤ 256 MB and about the same as at the small one."""
    out = []
    for method, big in large.items():
        little = small.get(method)
        name = f"rss-scale {method}: peak RSS at {big.rows:,} rows ≈ at {little.rows:,}, ≤ 256 MB" \
            if little else f"rss-scale {method}"
        if not big.ok or not little or not little.ok:
            out.append(Target(name, "needs both runs to succeed", "n/a" if big.ok else "MISS"))
            continue
        ok = big.peak <= RSS_LIMIT and big.peak <= RSS_SCALE_SLACK * little.peak
        out.append(Target(name, f"{big.peak / MB:.0f} MB vs {little.peak / MB:.0f} MB", "PASS" if ok else "MISS"))
    return out


def targets_table(items: list[Target]) -> Table:
    t = Table(title="Targets (BENCHMARKS.md)", box=box.MARKDOWN, title_justify="left")
    t.add_column("target")
    t.add_column("measured")
    t.add_column("status")
    for x in items:
        t.add_row(x.name, x.measured, x.status)
    return t


def console() -> Console:
    # Wide enough that tables are not wrapped when the output is piped to a file.
    return Console(width=200, highlight=False, markup=False)

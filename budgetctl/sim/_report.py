"""Presenting a simulation: a text table, a PNG frontier, and sweeps that trace a policy's frontier."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

import numpy as np

from ._plot import plot_allocation, plot_frontier
from ._simulate import DatasetResult, PolicyResult, SimulationResult

__all__ = [
    "format_table",
    "plot_frontier",
    "plot_allocation",
    "sweep_specs",
    "merge_sweeps",
    "dataset_label",
    "more_or_fewer",
]

_RANGE = re.compile(r"^(?P<low>[-+0-9.eE]+)\.\.(?P<high>[-+0-9.eE]+)$")


def sweep_specs(spec: str, points: int = 10) -> list[str]:
    """Expand a sweep spec with one ``key=LOW..HIGH`` range into at most ``points`` policy specs.

    The values are spaced where results change, not evenly: a threshold in [0, 1) that approaches 1
    (``ac:threshold=0.5..0.99``) is spaced evenly in ``log(1 - x)`` (0.5, 0.68, 0.79, ..., 0.99),
    because each step closer to 1 asks for about as many more samples as the last; positive bounds
    a decade or more apart (``fixed:n=1..40``, ``max-tokens:n=100..10000``) are spaced evenly in
    ``log x``; other ranges evenly. Integer bounds give distinct integers, so fewer than ``points``
    where the range is short.
    """
    if points < 2:
        raise ValueError(f"a sweep needs at least 2 points, got {points}")
    name, _, rest = spec.partition(":")
    items = [item.strip() for item in rest.split(",") if item.strip()]
    ranged = [(i, item) for i, item in enumerate(items) if ".." in item]
    if len(ranged) != 1:
        raise ValueError(f"sweep {spec!r} must have exactly one key=LOW..HIGH range, e.g. ac:threshold=0.5..0.99")
    index, item = ranged[0]
    key, _, bounds = item.partition("=")
    match = _RANGE.match(bounds.strip())
    if not match:
        raise ValueError(f"sweep {spec!r}: {bounds!r} is not a LOW..HIGH range of numbers")
    low_text, high_text = match["low"], match["high"]
    integral = all(re.fullmatch(r"[-+]?\d+", t) for t in (low_text, high_text))
    low, high = float(low_text), float(high_text)
    if not (np.isfinite(low) and np.isfinite(high)) or low == high:
        raise ValueError(f"sweep {spec!r}: LOW and HIGH must be two different finite numbers")
    grid = _spacing(low, high, points)
    if integral:
        values: list[str] = [str(v) for v in dict.fromkeys(round(x) for x in grid)]
    else:
        values = _shortest(grid, low_text, high_text)
    specs = []
    for value in values:
        parts = list(items)
        parts[index] = f"{key}={value}"
        specs.append(f"{name}:{','.join(parts)}")
    return specs


def _shortest(grid: np.ndarray, low_text: str, high_text: str) -> list[str]:
    """The grid as text: the bounds as given, the values between with the fewest significant digits
    (0.79, not 0.790384) that keep them distinct and in order."""
    for digits in range(3, 18):
        values = [low_text, *(f"{x:.{digits}g}" for x in grid[1:-1]), high_text]
        numbers = [float(v) for v in values]
        ascending = numbers[0] < numbers[-1]
        if all((a < b) if ascending else (a > b) for a, b in itertools.pairwise(numbers)):
            return values
    return [low_text, *(repr(float(x)) for x in grid[1:-1]), high_text]


def _spacing(low: float, high: float, points: int) -> np.ndarray:
    """``points`` values from ``low`` to ``high``, denser where a stop policy's results change faster."""
    lo, hi = min(low, high), max(low, high)
    if lo >= 0.0 and hi < 1.0 and (1.0 - lo) >= 4.0 * (1.0 - hi):
        grid = 1.0 - np.geomspace(1.0 - lo, 1.0 - hi, points)  # thresholds approaching 1
    elif lo > 0.0 and hi >= 10.0 * lo:
        grid = np.geomspace(lo, hi, points)  # a scale spanning decades
    else:
        grid = np.linspace(lo, hi, points)
    grid[0], grid[-1] = lo, hi  # exact bounds, free of rounding
    return grid if low <= high else grid[::-1]


def merge_sweeps(result: SimulationResult) -> SimulationResult:
    """The same result with each sweep's points of identical outcome merged into one row.

    Points of one sweep that gave the same accuracy, samples and tokens (a threshold the policy
    cannot tell from the next) become one row named by the range they cover, e.g.
    ``ac:threshold=0.5..0.68``, so that tables and plots show each distinct result once.
    """
    datasets = [_merge_dataset(d) for d in result.datasets]
    if len(result.datasets) == 1 and result.overall is result.datasets[0]:
        overall = datasets[0]
    else:
        overall = _merge_dataset(result.overall)
    return replace(result, datasets=datasets, overall=overall)


def _merge_dataset(dataset: DatasetResult) -> DatasetResult:
    rows: list[PolicyResult] = []
    runs: dict[tuple[str, float, float, float | None], int] = {}  # outcome -> index in rows
    firsts: dict[int, str] = {}
    for row in dataset.rows:
        if row.kind != "sweep":
            rows.append(row)
            continue
        outcome = (row.group, row.accuracy, row.mean_samples, row.mean_tokens)
        if outcome not in runs:
            runs[outcome] = len(rows)
            firsts[len(rows)] = row.policy
            rows.append(row)
            continue
        at = runs[outcome]
        rows[at] = replace(rows[at], policy=_span(firsts[at], row.policy))
    return replace(dataset, rows=rows)


def _span(first: str, last: str) -> str:
    """``ac:threshold=0.5`` and ``ac:threshold=0.68`` -> ``ac:threshold=0.5..0.68``."""
    name, _, rest = first.partition(":")
    a, b = rest.split(","), last.partition(":")[2].split(",")
    if len(a) != len(b):
        return f"{first} (= {last})"
    parts = [x if x == y else f"{x}..{y.partition('=')[2]}" for x, y in zip(a, b, strict=True)]
    return f"{name}:{','.join(parts)}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def dataset_label(name: str) -> str:
    """A dataset's name for a reader: ``(no dataset name)`` for questions whose files name none (trace logs)."""
    return name or "(no dataset name)"


def more_or_fewer(saving: float | None, unit: str) -> str:
    """``"19.8% fewer samples"`` for a saving of 0.198, ``"19.8% more samples"`` for -0.198, ``"n/a"`` for None."""
    if saving is None:
        return "n/a"
    return f"{abs(saving):.1%} {'fewer' if saving >= 0 else 'more'} {unit}"


#: Footnote of a ``gap closed`` cell for a row cheaper than the cost oracle.
_BEYOND_ORACLE = (
    "n/a*: spends less than the cost oracle (it stops before the running majority settles, or answers nothing), "
    "so a share of the gap between the oracle and the full pool does not apply; compare its accuracy instead"
)


def _gap_cell(gap_closed: float | None) -> str:
    # A row that spends less than the cost oracle (it stops before the majority settles, or returns
    # nothing) would close "more than 100%" of the gap, which reads as better than the oracle.
    if gap_closed is not None and gap_closed > 1.0 + 1e-9:
        return "n/a*"
    return _fmt(gap_closed, ".1%")


def _dataset_table(result: DatasetResult, deadlines: tuple[float, ...]) -> str:
    unit = "tokens" if result.tokens_known else "samples"
    header = (
        f"{dataset_label(result.dataset)}: {result.n_questions} questions, {result.pool_size} samples each"
        f"{'' if result.tokens_known else ' (token counts unknown: costs in samples)'}; "
        f"full-pool majority accuracy {result.full_pool_accuracy:.4f}"
    )
    columns = [
        "policy",
        "accuracy",
        "95% of orders",
        "samples",
        "tokens",
        "dollars",
        "retention",
        "savings",
        "gap closed",
    ]
    rows = []
    for row in result.rows:
        rows.append(
            [
                row.policy,
                f"{row.accuracy:.4f}",
                f"{row.ci_low:.3f}-{row.ci_high:.3f}",
                f"{row.mean_samples:.2f}",
                _fmt(row.mean_tokens, ".1f") if result.tokens_known else "unknown",
                _fmt(row.mean_dollars, ".6f") if result.tokens_known else "unknown",
                _fmt(row.retention, ".4f"),
                _fmt(row.savings, ".1%"),
                _gap_cell(row.gap_closed),
            ]
        )
    lines = [header, _grid(columns, rows)]
    if deadlines:
        timed = [r for r in result.rows if r.accuracy_at_deadline]
        if timed:
            dl_columns = ["policy", *[f"acc @ {d:g} s" for d in deadlines]]
            dl_rows = [
                [r.policy, *[f"{r.accuracy_at_deadline.get(f'{d:g}', 0.0):.4f}" for d in deadlines]] for r in timed
            ]
            lines += ["", "accuracy by deadline:", _grid(dl_columns, dl_rows)]
    lines.append(f"(savings and gap closed are in {unit}; gap = full pool minus cost oracle)")
    if any(_gap_cell(row.gap_closed) == "n/a*" for row in result.rows):
        lines.append(f"({_BEYOND_ORACLE})")
    return "\n".join(lines)


def _grid(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_table(result: SimulationResult) -> str:
    """The simulation as text: one table per dataset, then the union when there are several."""
    latency = result.latency
    intro = (
        f"pools: {', '.join(result.files)}; {result.orders} orders, seed {result.seed}; "
        f"latency: ttft {latency.ttft * 1000:g} ms, {latency.per_token * 1000:g} ms/token, "
        f"concurrency {latency.concurrency}; price ${result.price_per_token * 1000:g} per 1k tokens"
    )
    parts = [intro]
    if result.skipped:
        parts.append(f"skipped {len(result.skipped)} malformed line(s):")
        parts += [f"  {f}:{n}: {reason}" for f, n, reason in result.skipped]
    for dataset in result.datasets:
        parts += ["", _dataset_table(dataset, result.deadlines)]
    if len(result.datasets) > 1:
        parts += ["", _dataset_table(result.overall, result.deadlines)]
    steps_per_second = result.sample_steps / result.seconds if result.seconds > 0 else 0.0
    parts += ["", f"{result.sample_steps} sample-steps in {result.seconds:.1f} s ({steps_per_second:,.0f} per second)"]
    return "\n".join(parts)

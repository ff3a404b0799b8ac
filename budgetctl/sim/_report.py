"""Presenting a simulation: a text table, a PNG frontier, and sweeps that trace a policy's frontier."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from .._optional import import_optional
from ._simulate import DatasetResult, PolicyResult, SimulationResult

__all__ = ["format_table", "plot_frontier", "sweep_specs"]

_RANGE = re.compile(r"^(?P<low>[-+0-9.eE]+)\.\.(?P<high>[-+0-9.eE]+)$")


def sweep_specs(spec: str, points: int = 10) -> list[str]:
    """Expand a sweep spec with one ``key=LOW..HIGH`` range into ``points`` policy specs.

    ``ac:threshold=0.5..0.99`` gives ten thresholds evenly spaced from 0.5 to 0.99; integer bounds
    (``fixed:n=1..40``) give distinct integers.
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
    if integral:
        values: list[str] = [str(v) for v in sorted({round(x) for x in np.linspace(low, high, points)})]
    else:
        values = [f"{x:.6g}" for x in np.linspace(low, high, points)]
    specs = []
    for value in values:
        parts = list(items)
        parts[index] = f"{key}={value}"
        specs.append(f"{name}:{','.join(parts)}")
    return specs


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _dataset_table(result: DatasetResult, deadlines: tuple[float, ...]) -> str:
    unit = "tokens" if result.tokens_known else "samples"
    header = (
        f"{result.dataset}: {result.n_questions} questions, {result.pool_size} samples each"
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
                _fmt(row.gap_closed, ".1%"),
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


def plot_frontier(result: SimulationResult, path: str | os.PathLike[str]) -> None:
    """Draw accuracy against mean cost for every policy, sweep and reference, one panel per dataset."""
    matplotlib = import_optional("matplotlib", "plot", "budgetctl simulate --plot")
    matplotlib.use("Agg")
    plt = import_optional("matplotlib.pyplot", "plot", "budgetctl simulate --plot")
    panels = result.datasets
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, panels, strict=False):
        _panel(ax, dataset)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle(f"accuracy vs cost, {result.orders} orders (seed {result.seed})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _cost(row: PolicyResult, tokens_known: bool) -> float:
    return row.mean_tokens if tokens_known and row.mean_tokens is not None else row.mean_samples


def _panel(ax: Any, dataset: DatasetResult) -> None:
    known = dataset.tokens_known
    if dataset.fixed_curve:
        xs = dataset.fixed_curve_tokens if known else list(range(1, len(dataset.fixed_curve) + 1))
        ax.plot(xs, dataset.fixed_curve, color="0.6", lw=1.5, label="fixed-N majority")
    groups: dict[str, list[PolicyResult]] = {}
    for row in dataset.rows:
        if row.kind == "sweep":
            groups.setdefault(row.group, []).append(row)
    for group, members in groups.items():
        members = sorted(members, key=lambda r: _cost(r, known))
        ax.plot([_cost(r, known) for r in members], [r.accuracy for r in members], marker=".", label=group)
    markers = {"policy": "o", "oracle": "*", "reference": "s"}
    for row in dataset.rows:
        if row.kind == "sweep":
            continue
        ax.scatter(
            _cost(row, known),
            row.accuracy,
            marker=markers.get(row.kind, "o"),
            s=60 if row.kind == "oracle" else 35,
            label=row.policy,
            zorder=3,
        )
    ax.set_xscale("log")
    ax.set_xlabel("mean tokens per question" if known else "mean samples per question")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{dataset.dataset} ({dataset.n_questions} q)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")

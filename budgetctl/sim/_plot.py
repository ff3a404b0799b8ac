"""Pictures of a simulation (``budgetctl simulate --plot``), drawn with matplotlib (``budgetctl[plot]``).

* :func:`plot_frontier`: accuracy against cost, one panel per dataset: the fixed-N curve, every
  policy and sweep, the full-pool majority and the cost oracle. The axes are fitted to what a
  policy can reach; pass@k, far above, is an arrow at the top edge with its value, so it does not
  squash the policies into a strip. With a timed latency model, a second file shows accuracy by
  deadline.
* :func:`plot_allocation`: ``--scheduler``'s allocations side by side, accuracy with its band over
  orders, against the mean samples they spent.

Every series has its own colour and marker (so the figure survives grey-scale printing and colour
blindness), and the legend sits outside the axes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import atomic_path
from .._optional import import_optional

if TYPE_CHECKING:
    from ..sched._simulate import SharedBudgetResult
    from ._simulate import DatasetResult, PolicyResult, SimulationResult

__all__ = ["plot_frontier", "plot_allocation", "deadline_plot_path"]

#: Marker shapes, cycled together with the colours (ten of each, so the first ten series differ in both).
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
#: Cost spread (max / min) from which the cost axis is logarithmic.
_LOG_SPAN = 10.0


def deadline_plot_path(path: str | os.PathLike[str]) -> Path:
    """Where the accuracy-by-deadline figure of ``--plot PATH`` goes: ``frontier.png`` -> ``frontier-deadlines.png``."""
    target = Path(path)
    return target.with_name(f"{target.stem}-deadlines{target.suffix or '.png'}")


def _pyplot() -> Any:
    matplotlib = import_optional("matplotlib", "plot", "budgetctl simulate --plot")
    matplotlib.use("Agg")
    return import_optional("matplotlib.pyplot", "plot", "budgetctl simulate --plot")


def _style(index: int) -> dict[str, Any]:
    """Colour and marker of the ``index``-th series (tab10 colours, ten distinct markers)."""
    return {"color": f"C{index % 10}", "marker": _MARKERS[index % len(_MARKERS)]}


def _label(name: str) -> str:
    return name or "(no dataset name)"


def _cost(row: PolicyResult, tokens_known: bool) -> float:
    return row.mean_tokens if tokens_known and row.mean_tokens is not None else row.mean_samples


def _series(dataset: DatasetResult) -> list[str]:
    """The names that get a colour: policies, then sweeps, in table order."""
    names: list[str] = []
    for row in dataset.rows:
        key = row.group if row.kind == "sweep" else row.policy
        if row.kind in ("policy", "sweep") and key not in names:
            names.append(key)
    return names


def plot_frontier(result: SimulationResult, path: str | os.PathLike[str]) -> list[Path]:
    """Draw accuracy against mean cost to ``path`` (and accuracy by deadline beside it); the files written."""
    plt = _pyplot()
    panels = result.datasets
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    names = _series(result.overall)
    for ax, dataset in zip(axes.flat, panels, strict=False):
        _frontier_panel(ax, dataset, names)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle(f"accuracy against cost: mean over questions and {result.orders} orders (seed {result.seed})")
    _legend_outside(figure)
    written = [_save(figure, path, plt)]
    if result.deadlines and any(r.accuracy_at_deadline for r in result.overall.rows):
        written.append(_save(_deadline_figure(result, names, plt), deadline_plot_path(path), plt))
    return written


def _save(figure: Any, path: str | os.PathLike[str], plt: Any) -> Path:
    # Atomically: a reader (or a crash) never sees half a PNG, and a failed draw leaves the old file.
    try:
        with atomic_path(path) as partial:
            figure.savefig(partial, dpi=110, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)
    return Path(path)


def _legend_outside(figure: Any) -> None:
    """One legend for the figure, right of the panels, each label once (the panels share their series)."""
    unique: dict[str, Any] = {}
    for panel in figure.axes:
        for handle, label in zip(*panel.get_legend_handles_labels(), strict=True):
            unique.setdefault(label, handle)
    figure.tight_layout()
    figure.legend(
        list(unique.values()), list(unique), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False
    )


def _frontier_panel(ax: Any, dataset: DatasetResult, names: list[str]) -> None:
    known = dataset.tokens_known
    xs_all: list[float] = []
    ys_all: list[float] = []
    if dataset.fixed_curve:
        xs = dataset.fixed_curve_tokens if known else [float(n) for n in range(1, len(dataset.fixed_curve) + 1)]
        ax.plot(
            xs, dataset.fixed_curve, color="0.55", lw=1.4, ls="--", zorder=1, label="fixed-N majority, N = 1, 2, ..."
        )
        xs_all += list(xs)
        ys_all += list(dataset.fixed_curve)
    sweeps: dict[str, list[PolicyResult]] = {}
    for row in dataset.rows:
        if row.kind == "sweep":
            sweeps.setdefault(row.group, []).append(row)
        elif row.kind == "policy":
            style = _style(names.index(row.policy) if row.policy in names else len(names))
            x = _cost(row, known)
            ax.errorbar(
                x,
                row.accuracy,
                yerr=[[row.accuracy - row.ci_low], [row.ci_high - row.accuracy]],
                ls="none",
                ms=7,
                mec="black",
                mew=0.6,
                capsize=2,
                elinewidth=0.8,
                zorder=4,
                label=row.policy,
                **style,
            )
            xs_all.append(x)
            ys_all += [row.ci_low, row.ci_high]
    for group, members in sweeps.items():
        members = sorted(members, key=lambda r: _cost(r, known))
        style = _style(names.index(group) if group in names else len(names))
        xs = [_cost(r, known) for r in members]
        ys = [r.accuracy for r in members]
        ax.plot(xs, ys, lw=1.3, ms=5, zorder=3, label=f"sweep {group}", **style)
        xs_all += xs
        ys_all += ys
    # References: the full pool and the cost oracle are inside the policies' range by nature (same
    # accuracy, the extremes of cost); the hindsight rows (pass@k, best-of-N by the verifier) are
    # often far above, and are then marked on the top edge with their value.
    hindsight: list[PolicyResult] = []
    for row in dataset.rows:
        if row.kind == "reference" and row.policy.startswith("majority@"):
            # Large and hollow: the policy that spends the whole pool (fixed:n=N) shows inside it.
            ax.plot(
                _cost(row, known), row.accuracy, "ks", ms=12, mfc="none", mew=1.2, zorder=5, label="full-pool majority"
            )
            xs_all.append(_cost(row, known))
            ys_all.append(row.accuracy)
        elif row.policy.startswith("cost oracle"):
            ax.plot(_cost(row, known), row.accuracy, "k*", ms=12, zorder=5, label="cost oracle (not causal)")
            xs_all.append(_cost(row, known))
            ys_all.append(row.accuracy)
        elif row.kind in ("oracle", "reference"):
            hindsight.append(row)
    low, high = _limits(ys_all)
    ax.set_ylim(low, high)
    off_scale = 0
    for row in hindsight:
        x, y = _cost(row, known), row.accuracy
        xs_all.append(x)
        name = row.policy.split(" ")[0]
        marker = "d" if name.startswith("best-of") else "^"
        label = "best-of-N by the verifier (hindsight)" if marker == "d" else "pass@k: first correct (hindsight)"
        if low <= y <= high:
            ax.plot(x, y, marker, color="black", ms=7, mfc="white", zorder=5, label=label)
            continue
        # Off the scale: a marker on the axes' edge and its value beside it, outside the data area;
        # several are staggered so that their labels do not overlap.
        top = y > high
        ax.plot(
            x,
            1.0 if top else 0.0,
            marker,
            color="black",
            mfc="white",
            ms=8,
            clip_on=False,
            zorder=6,
            transform=ax.get_xaxis_transform(),
            label=label,
        )
        ax.annotate(
            f"{name} = {y:.3f} (off scale)",
            xy=(x, 1.0 if top else 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(-7, (3 + 9 * off_scale) if top else -3 - 9 * off_scale),
            textcoords="offset points",
            ha="right",
            va="bottom" if top else "top",
            fontsize=7,
        )
        off_scale += 1
    positive = [x for x in xs_all if x > 0]
    if positive and max(positive) / min(positive) >= _LOG_SPAN:
        _log_axis(ax.xaxis, ax.set_xscale)
    ax.set_xlabel("mean tokens per question" if known else "mean samples per question (token counts unknown)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{_label(dataset.dataset)} ({dataset.n_questions} questions)", fontsize=10, pad=22)
    ax.grid(alpha=0.3, which="both")


def _log_axis(axis: Any, set_scale: Any) -> None:
    """A logarithmic axis labelled in plain numbers (100, 1000; 0.1, 1, 10), not powers of ten."""
    ticker = import_optional("matplotlib.ticker", "plot", "budgetctl simulate --plot")
    set_scale("log")
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))


def _limits(values: list[float]) -> tuple[float, float]:
    """y-limits around ``values`` with a margin, at least two points of accuracy tall, within [0, 1]."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    span = max(high - low, 0.02)
    margin = 0.08 * span
    middle = (low + high) / 2
    low, high = middle - span / 2 - margin, middle + span / 2 + margin
    return max(0.0, low), min(1.0, high)


def _deadline_figure(result: SimulationResult, names: list[str], plt: Any) -> Any:
    """Accuracy by deadline, one panel per dataset: what a run answers if it must answer then."""
    panels = result.datasets
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    deadlines = sorted(result.deadlines)
    for ax, dataset in zip(axes.flat, panels, strict=False):
        timed = [r for r in dataset.rows if r.accuracy_at_deadline and r.kind == "policy"]
        if not timed:  # only sweeps: each point is a curve
            timed = [r for r in dataset.rows if r.accuracy_at_deadline and r.kind == "sweep"]
        for i, row in enumerate(timed):
            ys = [row.accuracy_at_deadline.get(f"{d:g}", math.nan) for d in deadlines]
            style = _style(names.index(row.policy) if row.policy in names else i)
            ax.plot(deadlines, ys, lw=1.5, ms=6, label=row.policy, **style)
        ax.axhline(dataset.full_pool_accuracy, color="0.4", ls=":", lw=1, label="full-pool majority")
        if len(deadlines) > 1 and deadlines[-1] / deadlines[0] >= _LOG_SPAN:
            _log_axis(ax.xaxis, ax.set_xscale)
        ax.set_xlabel("deadline (s)")
        ax.set_ylabel("accuracy when answering by then")
        ax.set_ylim(0.0, min(1.0, max(0.05, dataset.full_pool_accuracy * 1.15)))
        ax.set_title(f"{_label(dataset.dataset)} ({dataset.n_questions} questions)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    latency = result.latency
    figure.suptitle(
        f"accuracy by deadline: {latency.ttft * 1000:g} ms to the first token, {latency.per_token * 1000:g} ms per "
        f"token, {latency.concurrency} in flight"
    )
    _legend_outside(figure)
    return figure


def plot_allocation(result: SharedBudgetResult, path: str | os.PathLike[str]) -> Path:
    """Draw ``--scheduler``'s allocations to ``path``: accuracy with its band over orders, one row each.

    One panel per dataset; the allocations are rows (they spend nearly the same mean samples, so a
    cost axis would pile them up), each labelled with the samples it spent.
    """
    plt = _pyplot()
    panels = result.datasets
    height = max(len(d.rows) for d in panels) * 0.42 + 1.4
    figure, axes = plt.subplots(len(panels), 1, figsize=(8.5, height * len(panels)), squeeze=False)
    for ax, dataset in zip(axes.flat, panels, strict=True):
        rows = list(reversed(dataset.rows))  # first row on top
        xs: list[float] = [dataset.full_pool_accuracy]
        for i, row in enumerate(rows):
            style = _style(len(rows) - 1 - i)
            ax.errorbar(
                row.accuracy,
                i,
                xerr=[[row.accuracy - row.ci_low], [row.ci_high - row.accuracy]],
                ls="none",
                ms=8,
                mec="black",
                mew=0.6,
                capsize=3,
                **style,
            )
            xs += [row.ci_low, row.ci_high]
        low, high = _limits(xs)
        ax.set_xlim(low, high + 0.18 * (high - low))  # room for the samples on the right
        for i, row in enumerate(rows):
            ax.annotate(
                f"{row.mean_samples:.2f} samples",
                xy=(1.0, i),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=8,
                color="0.25",
            )
        ax.axvline(dataset.full_pool_accuracy, color="0.4", ls=":", lw=1)
        ax.annotate(
            "full-pool majority",
            xy=(dataset.full_pool_accuracy, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=7,
            color="0.3",
        )
        ax.set_yticks(range(len(rows)), [row.name for row in rows], fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlabel("accuracy (mean, and 95% of orders)")
        ax.set_title(f"{_label(dataset.dataset)} ({dataset.n_questions} questions)", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    figure.suptitle(
        f"{result.budget_per_question:g} samples per question: one shared budget ({result.slots} slots) against "
        f"the same spent evenly, {result.orders} orders (seed {result.seed})",
        fontsize=10,
    )
    figure.tight_layout()
    return _save(figure, path, plt)

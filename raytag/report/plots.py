"""Figures for the run report, rendered to PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas instead of pyplot,
so rendering needs no display, never touches the global backend of the caller's process
(a notebook keeps its own), and leaks no open figures.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.stats import spearmanr

RAYTAG_COLOR = "#1f77b4"
BASELINE_COLOR = "#9aa5b1"
NON_LEARNED_COLOR = "#e8a33d"
MAX_TICK_LABELS = 60


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _floats(values) -> np.ndarray:
    """Float array with missing values (None) as NaN, so plots show gaps instead of failing."""
    return np.array([np.nan if value is None else value for value in values], dtype=np.float64)


def order_by_groups(names: Sequence[str], groups: Sequence[Sequence[str]]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Permutation that lists tasks group by group, and each group's [start, end) span in it.

    A task named in several groups (overlapping groupings) is placed with the first one;
    tasks in no group follow at the end; names unknown to ``names`` are skipped.
    """
    index = {name: i for i, name in enumerate(names)}
    order: list[int] = []
    placed: set[int] = set()
    spans: list[tuple[int, int]] = []
    for group in groups:
        start = len(order)
        for name in group:
            i = index.get(name)
            if i is not None and i not in placed:
                order.append(i)
                placed.add(i)
        if len(order) > start:
            spans.append((start, len(order)))
    order.extend(i for i in range(len(names)) if i not in placed)
    return np.asarray(order, dtype=np.int64), spans


def affinity_heatmap(affinity: np.ndarray, names: Sequence[str], groups: Sequence[Sequence[str]]) -> bytes:
    """Affinity matrix with rows and columns ordered by group and each group's block outlined."""
    order, spans = order_by_groups(names, groups)
    matrix = np.asarray(affinity, dtype=np.float64)[np.ix_(order, order)]
    n = len(order)
    off_diagonal = matrix[~np.eye(n, dtype=bool)] if n > 1 else matrix.ravel()
    finite = off_diagonal[np.isfinite(off_diagonal)]
    # Robust symmetric colour range: a few extreme entries must not wash out the blocks.
    limit = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
    limit = limit if limit > 0 else 1.0
    side = 7.5 if n > 30 else 6.0
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    # Past a few hundred tasks there are more cells than pixels: antialias instead of aliasing.
    interpolation = "nearest" if n <= 300 else "antialiased"
    image = ax.imshow(matrix, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), interpolation=interpolation)
    line_width = 1.6 if n <= 100 else 0.8
    for start, end in spans:
        ax.add_patch(
            Rectangle((start - 0.5, start - 0.5), end - start, end - start, fill=False, edgecolor="black", linewidth=line_width)
        )
    if n <= MAX_TICK_LABELS:
        labels = [names[i] for i in order]
        font = 8 if n <= 30 else 6
        ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
        ax.set_yticks(range(n), labels, fontsize=font)
    else:
        ax.set_xlabel(f"{n} tasks, ordered by group")
    ax.set_title("Task affinity, ordered by group (boxes = groups)", fontsize=11)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="affinity (row task's score)")
    return _png(fig)


def training_curves(epochs: Sequence[Mapping], best_epoch: int | None) -> bytes:
    """Training loss and validation AP/F1 per epoch, with the selected epoch marked."""
    epoch = np.array([row.get("epoch", i) for i, row in enumerate(epochs)], dtype=np.float64)

    fig = Figure(figsize=(10, 3.6))
    loss_ax, metric_ax = fig.subplots(1, 2)
    loss_ax.plot(epoch, _floats(row.get("loss") for row in epochs), color=RAYTAG_COLOR, marker="o", markersize=3)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("Training loss", fontsize=11)
    metric_ax.plot(epoch, _floats(row.get("val_ap") for row in epochs), marker="o", markersize=3, label="validation AP")
    metric_ax.plot(epoch, _floats(row.get("val_f1") for row in epochs), marker="s", markersize=3, label="validation F1")
    metric_ax.set_xlabel("epoch")
    metric_ax.set_title("Validation metrics (mean over tasks)", fontsize=11)
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="black", linestyle="--", linewidth=1, label="best epoch")
    metric_ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def strategy_bars(
    labels: Sequence[str],
    ap: Sequence[float | None],
    ap_std: Sequence[float | None],
    f1: Sequence[float | None],
    kinds: Sequence[str],
    base_rate: float | None = None,
) -> bytes:
    """Mean test AP (± std over seeds) and F1 per strategy.

    ``kinds`` colours the bars: "raytag", "baseline" or "non-learned".
    """
    colors = {"raytag": RAYTAG_COLOR, "baseline": BASELINE_COLOR, "non-learned": NON_LEARNED_COLOR}
    bar_colors = [colors.get(kind, BASELINE_COLOR) for kind in kinds]
    y = np.arange(len(labels))
    ap_values, std_values, f1_values = _floats(ap), _floats(ap_std), _floats(f1)
    fig = Figure(figsize=(10, 0.45 * len(labels) + 1.6))
    ap_ax, f1_ax = fig.subplots(1, 2, sharey=True)
    errors = np.where(np.isfinite(std_values), std_values, 0.0)
    for ax, values, title in ((ap_ax, ap_values, "mean test AP"), (f1_ax, f1_values, "mean test F1")):
        shown = np.where(np.isfinite(values), values, 0.0)
        ax.barh(y, shown, color=bar_colors, xerr=errors if ax is ap_ax else None, capsize=3)
        top = np.nanmax(values) if np.isfinite(values).any() else 1.0
        # Labels start past the error bar so the two never overlap.
        label_x = shown + (errors if ax is ap_ax else 0.0) + 0.02 * top
        for yi, value in zip(y, values):
            text = "n/a" if not np.isfinite(value) else f"{value:.3f}"
            ax.text(label_x[yi], yi, text, va="center", fontsize=8)
        ax.set_xlim(0, (top + errors.max(initial=0.0)) * 1.25 if top > 0 else 1.0)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="x", alpha=0.3)
    if base_rate is not None:
        ap_ax.axvline(base_rate, color="black", linestyle=":", linewidth=1, label=f"base rate {base_rate:.3f}")
        ap_ax.legend(fontsize=8, loc="best")
    ap_ax.set_yticks(y, labels)
    ap_ax.invert_yaxis()
    fig.tight_layout()
    return _png(fig)


def validation_scatter(true: Sequence[float], estimated: Sequence[float], base: Sequence[float] | None) -> bytes:
    """True vs estimated fine-tuned losses, and (with base losses) true vs estimated loss change.

    The change panel matters more: pooled losses line up mostly because tasks differ in
    their loss level, not because the estimator ranks subsets well.
    """
    true_arr = np.asarray(true, dtype=np.float64)
    est_arr = np.asarray(estimated, dtype=np.float64)
    panels = [("loss after fine-tuning", true_arr, est_arr)]
    if base is not None and len(base) == len(true_arr):
        base_arr = np.asarray(base, dtype=np.float64)
        panels.append(("loss change vs θ*", true_arr - base_arr, est_arr - base_arr))
    fig = Figure(figsize=(5 * len(panels), 4.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, x, y) in zip(axes, panels):
        ax.scatter(x, y, s=9, alpha=0.6, color=RAYTAG_COLOR, edgecolors="none")
        both = np.concatenate([x, y])
        both = both[np.isfinite(both)]
        if both.size:
            low, high = float(both.min()), float(both.max())
            pad = 0.05 * (high - low or 1.0)
            ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", linewidth=1, linestyle="--", label="y = x")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"true {title}")
        ax.set_ylabel(f"estimated {title}")
        ax.set_title(f"{title} (Spearman ρ = {_spearman(x, y):.3f})", fontsize=11)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    keep = np.isfinite(x) & np.isfinite(y)
    return float(spearmanr(x[keep], y[keep]).statistic) if keep.sum() > 2 else float("nan")


def k_sweep(ks: Sequence[int], objectives: Sequence[float], chosen_k: int | None) -> bytes:
    """Clustering objective for each k of the sweep, with the chosen k marked."""
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.add_subplot()
    ax.plot(ks, objectives, marker="o", color=RAYTAG_COLOR)
    if chosen_k is not None:
        ax.axvline(chosen_k, color="black", linestyle="--", linewidth=1, label=f"chosen k = {chosen_k:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("number of groups k")
    ax.set_ylabel("objective")
    ax.set_title("k sweep", fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def source_gains(names: Sequence[str], gains: Sequence[float], chosen: Sequence[str], limit: int = 25) -> bytes:
    """Estimated gain of each source task for one target (largest first), chosen ones coloured."""
    gains_arr = np.asarray(gains, dtype=np.float64)
    top = np.argsort(-gains_arr, kind="stable")[:limit]
    chosen_set = set(chosen)
    labels = [names[i] for i in top]
    fig = Figure(figsize=(7, 0.28 * len(top) + 1.3))
    ax = fig.add_subplot()
    ax.barh(
        np.arange(len(top)),
        gains_arr[top],
        color=[RAYTAG_COLOR if name in chosen_set else BASELINE_COLOR for name in labels],
    )
    ax.set_yticks(np.arange(len(top)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("estimated gain for the target (blue = chosen)")
    ax.set_title(f"Top {len(top)} sources by estimated gain", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)

"""Figures from tidy results or summaries: pure `DataFrame -> matplotlib Figure` functions.

Figures are built with `matplotlib.figure.Figure` (no pyplot state, nothing leaks between calls);
saving uses the Agg/PDF canvases, so no display is needed. In a notebook a returned Figure shows
itself once `%matplotlib inline` is active.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import SymLogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from utils.analysis.results import DENSE, FINETUNING_MODES
from utils.analysis.tables import (AVERAGE, FINETUNING_TITLES, average_over_datasets, dataset_order, delta_table,
                                   method_order, select, summarize)
from utils.errors import UserError
from utils.io import atomic_write

ACC_LABEL = "Top-1 accuracy (%)"
SPARSITY_LABEL = "Sparsity (%)"
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f"]


def method_colors(data: pd.DataFrame, *, dense: str = DENSE) -> dict[str, str]:
    """A fixed colour per method (Dense black), so every figure of one data set agrees."""
    others = [m for m in method_order(summarize(data), dense=dense) if m != dense]
    colors = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(others)}
    return {dense: "black", **colors}


def _title(finetuning: str) -> str:
    return FINETUNING_TITLES.get(finetuning, f"{finetuning} fine-tuning")


def _legend(fig: Figure, methods: list[str], colors: dict[str, str], *, dense: str, dense_label: str) -> None:
    handles = [Line2D([], [], color=colors[m], ls="--" if m == dense else "-",
                      marker=None if m == dense else "o", label=dense_label if m == dense else m)
               for m in methods]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), frameon=False)


def _sparsity_ticks(ax, sparsities_pct: list[float]) -> None:
    ticks = sorted(set(sparsities_pct), reverse=True)
    labels, last = [], math.inf
    for t in ticks:  # keep every tick, but skip labels that would overlap (89 next to 90 shows 90)
        labels.append(f"{t:g}" if last - t >= 3 else "")
        last = t if labels[-1] else last
    ax.set_xticks(ticks, labels)


def _dense_line(ax, rows: pd.DataFrame, color: str) -> None:
    if rows.empty:
        return
    mean = 100 * rows["val_acc_mean"].iloc[0]
    std = 100 * (0.0 if pd.isna(rows["val_acc_std"].iloc[0]) else rows["val_acc_std"].iloc[0])
    ax.axhline(mean, color=color, ls="--", lw=1.3, zorder=1)
    if std > 0:
        ax.axhspan(mean - std, mean + std, color=color, alpha=0.10, lw=0, zorder=0)


def _method_lines(ax, part: pd.DataFrame, colors: dict[str, str], *, dense: str) -> None:
    for method in method_order(part, dense=dense):
        if method == dense:
            continue
        rows = part[part["method"] == method].sort_values("sparsity")
        ax.errorbar(100 * rows["sparsity"], 100 * rows["val_acc_mean"], yerr=100 * rows["val_acc_std"].fillna(0),
                    color=colors[method], marker="o", ms=4, lw=1.5, capsize=3, label=method)


def plot_accuracy_vs_sparsity(data: pd.DataFrame, *, finetuning: str, arch: str, dense: str = DENSE) -> Figure:
    """One panel per dataset (4 columns): accuracy vs sparsity per method, Dense dashed, std error bars."""
    part = select(data, finetuning=finetuning, arch=arch)
    colors, datasets = method_colors(data, dense=dense), dataset_order(part)
    ncols = min(4, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.1 * nrows + 1.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    sparse_pct = [100 * s for s in part.loc[part["method"] != dense, "sparsity"]]
    for i, (ax, name) in enumerate(zip(axes, datasets)):
        rows = part[part["dataset"] == name]
        _dense_line(ax, rows[rows["method"] == dense], colors[dense])
        _method_lines(ax, rows, colors, dense=dense)
        ax.set_title(name, fontsize=11)
        _sparsity_ticks(ax, sparse_pct)
        ax.grid(alpha=0.3)
        if i + ncols >= len(datasets):  # the lowest panel of its column
            ax.set_xlabel(SPARSITY_LABEL)
        if i % ncols == 0:
            ax.set_ylabel(ACC_LABEL)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    low, high = part["n_seeds"].min(), part["n_seeds"].max()
    seeds = f"{low} seed" if low == high == 1 else f"mean ± std over {low if low == high else f'{low}–{high}'} seeds"
    fig.suptitle(f"{_title(finetuning)}, {arch}: accuracy vs sparsity ({seeds})", fontsize=13)
    _legend(fig, method_order(part, dense=dense), colors, dense=dense,
            dense_label=f"{dense} (band: ± std)" if high > 1 else dense)
    return fig


def plot_average_vs_sparsity(data: pd.DataFrame, *, arch: str, dense: str = DENSE) -> Figure:
    """Accuracy averaged over datasets vs sparsity, one panel per finetuning mode (complete methods only)."""
    avg = average_over_datasets(data, dense=dense)
    avg = avg[(avg["arch"] == arch) & avg["complete"]]
    if avg.empty:
        raise UserError(f"no method of arch {arch!r} has results on every dataset; cannot average")
    modes = [m for m in dict.fromkeys([*FINETUNING_MODES, *avg["finetuning"]]) if m in set(avg["finetuning"])]
    colors = method_colors(data, dense=dense)
    fig = Figure(figsize=(6.2 * len(modes), 4.8), layout="constrained")
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        part = avg[avg["finetuning"] == mode].assign(val_acc_std=np.nan)
        _dense_line(ax, part[part["method"] == dense], colors[dense])
        _method_lines(ax, part, colors, dense=dense)
        ax.set_title(f"{_title(mode)} (mean of {int(part['n_datasets'].max())} datasets)")
        ax.set_xlabel(SPARSITY_LABEL)
        ax.set_ylabel(f"Mean {ACC_LABEL[0].lower()}{ACC_LABEL[1:]}")
        _sparsity_ticks(ax, [100 * s for s in part.loc[part["method"] != dense, "sparsity"]])
        ax.grid(alpha=0.3)
    fig.suptitle(f"{arch}: accuracy averaged over datasets vs sparsity", fontsize=13)
    _legend(fig, method_order(avg, dense=dense), colors, dense=dense, dense_label=dense)
    return fig


def plot_delta_heatmap(data: pd.DataFrame, *, finetuning: str, arch: str, dense: str = DENSE) -> Figure:
    """Heatmap of accuracy minus Dense (points), rows method@sparsity, columns datasets and Average."""
    delta = delta_table(data, finetuning=finetuning, arch=arch, dense=dense)
    values = delta.to_numpy(dtype=float)
    finite = np.abs(values[np.isfinite(values)])
    # Differences span a few tenths to tens of points (LTH-T collapses in linear probing): a
    # symmetric log scale keeps both visible; every value is printed in its cell anyway.
    limit = max(1.0, float(finite.max())) if finite.size else 1.0
    nrows, ncols = values.shape
    fig = Figure(figsize=(1.0 * ncols + 3.2, 0.36 * nrows + 2.0), layout="constrained")
    ax = fig.subplots()
    cmap = _diverging_cmap()
    norm = SymLogNorm(linthresh=1.0, vmin=-limit, vmax=limit, base=10)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        text = "–" if not np.isfinite(v) else f"{v:+.1f}" if abs(v) >= 0.05 else "0.0"
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="white" if np.isfinite(v) and abs(norm(v) - 0.5) > 0.33 else "black")
    ax.set_xticks(range(ncols), list(delta.columns), rotation=40, ha="right")
    ax.set_yticks(range(nrows), list(delta.index))
    if AVERAGE in delta.columns:
        ax.axvline(list(delta.columns).index(AVERAGE) - 0.5, color="black", lw=1.5)
    ticks = [t for t in (-100, -30, -10, -3, -1, 0, 1, 3, 10, 30, 100) if abs(t) <= limit]
    bar = fig.colorbar(image, ax=ax, shrink=0.9, label="Accuracy minus Dense (points, symmetric log scale)")
    bar.set_ticks(ticks, labels=[f"{t:+g}" if t else "0" for t in ticks])
    ax.set_xlabel("Dataset")
    ax.set_ylabel("Method @ sparsity")
    ax.set_title(f"{_title(finetuning)}, {arch}: difference to Dense (points)")
    return fig


def _diverging_cmap():
    from matplotlib import colormaps

    return colormaps["RdBu"].with_extremes(bad="#dddddd")


def save_figure(fig: Figure, stem: str | Path, *, formats: tuple[str, ...] = ("png", "pdf"),
                dpi: int = 150) -> list[Path]:
    """Write `fig` as stem.png and stem.pdf (creating the folder); return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    for path in paths:
        atomic_write(path, lambda tmp, fmt=path.suffix[1:]: fig.savefig(tmp, dpi=dpi, format=fmt))
    return paths

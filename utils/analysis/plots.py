"""Figures from tidy results or summaries: pure `DataFrame -> matplotlib Figure` functions.

Figures are built with `matplotlib.figure.Figure` (no pyplot state, nothing leaks between calls);
saving uses the Agg/PDF canvases, so no display is needed. In a notebook a returned Figure shows
itself once `%matplotlib inline` is active.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import SymLogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from utils.analysis.results import DENSE, FINETUNING_MODES
from utils.analysis.tables import (
    AVERAGE,
    FINETUNING_TITLES,
    average_over_datasets,
    dataset_order,
    delta_table,
    method_order,
    select,
    summarize,
)
from utils.errors import UserError
from utils.io import atomic_write

ACC_LABEL = "Top-1 accuracy (%)"
MAP_LABEL = "mAP@0.5:0.95 (%)"
SPARSITY_LABEL = "Sparsity (%)"
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f"]
# one marker per method besides its colour, and each method's points shifted a little along the sparsity axis:
# two methods at one sparsity with close scores (your runs beside the paper's) both stay visible
_MARKERS = ["o", "s", "D", "^", "v", "P", "X", "<", ">", "h"]
DODGE_PCT = 0.35


def score_title(arch: str) -> str:
    """What the score column holds for an architecture: a detector's (YOLO) rows carry COCO mAP, the others top-1
    accuracy."""
    return MAP_LABEL if arch.lower().startswith("yolo") else ACC_LABEL


def score_label(data: pd.DataFrame) -> str:
    """The label of the rows' score: mAP for detection rows (results.csv's task column; without one, detector
    architectures), else top-1 accuracy."""
    tasks = set(data["task"].dropna()) - {""} if "task" in data.columns else set()
    if tasks:
        return MAP_LABEL if tasks == {"detection"} else ACC_LABEL
    archs = set(data["arch"])
    return MAP_LABEL if archs and all(score_title(a) == MAP_LABEL for a in archs) else ACC_LABEL


def _score_word(data: pd.DataFrame) -> str:
    return "mAP" if score_label(data) == MAP_LABEL else "accuracy"


def _wrapped(text: str, *, width_in: float, fontsize: float) -> str:
    """`text` broken into lines that fit `width_in` inches at `fontsize` points (an average glyph of DejaVu Sans is
    about half the font size wide; 0.55 leaves a margin): a long title on a narrow figure wraps, not leaves it."""
    chars = max(12, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars)) or text


def method_colors(data: pd.DataFrame, *, dense: str = DENSE) -> dict[str, str]:
    """A fixed colour per method (Dense black), so every figure of one data set agrees."""
    others = [m for m in method_order(summarize(data), dense=dense) if m != dense]
    colors = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(others)}
    return {dense: "black", **colors}


def _title(finetuning: str) -> str:
    return FINETUNING_TITLES.get(finetuning, f"{finetuning} fine-tuning")


def _legend(fig: Figure, methods: list[str], colors: dict[str, str], markers: dict[str, str], *, dense: str,
            dense_label: str) -> None:
    handles = [Line2D([], [], color=colors[m], ls="--" if m == dense else "-",
                      marker=None if m == dense else markers[m], label=dense_label if m == dense else m)
               for m in methods]
    # as many columns as the figure's width holds (a legend wider than the canvas is cut off)
    longest = max((len(h.get_label()) for h in handles), default=1)
    fits = max(1, int(fig.get_figwidth() * 72 / (0.6 * 10 * (longest + 5))))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8, fits), frameon=False)


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


def method_markers(data: pd.DataFrame, *, dense: str = DENSE) -> dict[str, str]:
    """A fixed marker per method (the colours' order), so every figure of one data set agrees."""
    others = [m for m in method_order(summarize(data), dense=dense) if m != dense]
    return {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(others)}


def _method_lines(ax, part: pd.DataFrame, colors: dict[str, str], markers: dict[str, str], *, dense: str) -> None:
    methods = [m for m in method_order(part, dense=dense) if m != dense]
    for i, method in enumerate(methods):
        rows = part[part["method"] == method].sort_values("sparsity")
        dodge = DODGE_PCT * (i - (len(methods) - 1) / 2)
        ax.errorbar(100 * rows["sparsity"] + dodge, 100 * rows["val_acc_mean"],
                    yerr=100 * rows["val_acc_std"].fillna(0), color=colors[method], marker=markers[method], ms=4.5,
                    mec="white", mew=0.6, lw=1.5, capsize=3, label=method, zorder=2 + i)


def plot_accuracy_vs_sparsity(data: pd.DataFrame, *, finetuning: str, arch: str, dense: str = DENSE) -> Figure:
    """One panel per dataset (4 columns): accuracy vs sparsity per method, Dense dashed, std error bars."""
    part = select(data, finetuning=finetuning, arch=arch)
    colors, datasets = method_colors(data, dense=dense), dataset_order(part)
    markers, label = method_markers(data, dense=dense), score_label(part)
    ncols = min(4, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.1 * nrows + 1.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    sparse_pct = [100 * s for s in part.loc[part["method"] != dense, "sparsity"]]
    for i, (ax, name) in enumerate(zip(axes, datasets)):
        rows = part[part["dataset"] == name]
        _dense_line(ax, rows[rows["method"] == dense], colors[dense])
        _method_lines(ax, rows, colors, markers, dense=dense)
        ax.set_title(_wrapped(name, width_in=4.0, fontsize=11), fontsize=11)
        _sparsity_ticks(ax, sparse_pct)
        ax.grid(alpha=0.3)
        if i + ncols >= len(datasets):  # the lowest panel of its column
            ax.set_xlabel(SPARSITY_LABEL)
        if i % ncols == 0:
            ax.set_ylabel(label)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    low, high = part["n_seeds"].min(), part["n_seeds"].max()
    seeds = f"{low} seed" if low == high == 1 else f"mean ± std over {low if low == high else f'{low}–{high}'} seeds"
    fig.suptitle(_wrapped(f"{_title(finetuning)}, {arch}: {_score_word(part)} vs sparsity ({seeds})",
                          width_in=fig.get_figwidth(), fontsize=13), fontsize=13)
    _legend(fig, method_order(part, dense=dense), colors, markers, dense=dense,
            dense_label=f"{dense} (band: ± std)" if high > 1 else dense)
    return fig


def plot_average_vs_sparsity(data: pd.DataFrame, *, arch: str, dense: str = DENSE) -> Figure:
    """Accuracy averaged over datasets vs sparsity, one panel per finetuning mode (complete methods only)."""
    avg = average_over_datasets(data, dense=dense)
    avg = avg[(avg["arch"] == arch) & avg["complete"]]
    if avg.empty:
        raise UserError(f"no method of arch {arch!r} has results on every dataset; cannot average")
    modes = [m for m in dict.fromkeys([*FINETUNING_MODES, *avg["finetuning"]]) if m in set(avg["finetuning"])]
    colors, markers = method_colors(data, dense=dense), method_markers(data, dense=dense)
    of_arch = summarize(data)
    of_arch = of_arch[of_arch["arch"] == arch]
    label = score_label(of_arch)
    fig = Figure(figsize=(6.2 * len(modes), 4.8), layout="constrained")
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        part = avg[avg["finetuning"] == mode].assign(val_acc_std=np.nan)
        _dense_line(ax, part[part["method"] == dense], colors[dense])
        _method_lines(ax, part, colors, markers, dense=dense)
        count = int(part["n_datasets"].max())
        ax.set_title(f"{_title(mode)} (mean of {count} dataset{'s' if count != 1 else ''})")
        ax.set_xlabel(SPARSITY_LABEL)
        ax.set_ylabel(f"Mean {label[0].lower()}{label[1:]}" if label == ACC_LABEL else f"Mean {label}")
        _sparsity_ticks(ax, [100 * s for s in part.loc[part["method"] != dense, "sparsity"]])
        ax.grid(alpha=0.3)
    fig.suptitle(_wrapped(f"{arch}: {_score_word(of_arch)} averaged over datasets vs sparsity",
                          width_in=fig.get_figwidth(), fontsize=13), fontsize=13)
    _legend(fig, method_order(avg, dense=dense), colors, markers, dense=dense, dense_label=dense)
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
    word = "mAP" if score_label(select(data, finetuning=finetuning, arch=arch)) == MAP_LABEL else "Accuracy"
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    # along the bar: as many lines as its height needs
    bar.set_label(_wrapped(f"{word} minus Dense (points, symmetric log scale)",
                           width_in=0.9 * max(fig.get_figheight() - 1.6, 0.8), fontsize=10))
    bar.set_ticks(ticks, labels=[f"{t:+g}" if t else "0" for t in ticks])
    ax.set_xlabel("Dataset")
    ax.set_ylabel("Method @ sparsity")
    # over the figure, not the axes: long row labels push the axes right, and a title centred on them left the canvas
    fig.suptitle(_wrapped(f"{_title(finetuning)}, {arch}: difference to Dense (points)",
                          width_in=fig.get_figwidth() - 0.3, fontsize=12), fontsize=12)
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

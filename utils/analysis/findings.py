"""'What this shows': the study's two main findings checked on a set of results, with the paper's figures beside.

The paper (ResNet-50 on 12 datasets) finds (1) full fine-tuning above linear probing, for dense and sparse upstreams
alike, and (2) under full fine-tuning, sparse upstreams of the progressive methods (AC/DC, GMP) within about one
point of dense at 80% sparsity. `findings_section` computes both from any results (one architecture at a time), the
methods within noise of Dense per mode and sparsity, and the order of the methods, each beside the paper's number
for the same quantity, and says whether the finding holds. Pure DataFrame -> Markdown lines, no torch.
"""
from __future__ import annotations

import math

import pandas as pd

from utils.analysis.plots import MAP_LABEL, score_label
from utils.analysis.results import DENSE
from utils.analysis.tables import AVERAGE, FINETUNING_TITLES, delta_table, mean_rank, sparsity_label, summarize
from utils.errors import UserError

PAPER_ARCH = "ResNet-50"
PROGRESSIVE = ("AC/DC", "GMP")           # the paper's gradual methods, the ones finding 2 is about
CLOSE_POINTS = 1.0                       # "within about one point" (finding 2), and the noise floor below


def within_noise(method: pd.Series, dense: pd.Series) -> bool | None:
    """Whether one method's mean is within noise of Dense's on one dataset: |difference| at most two standard
    errors of the difference over seeds, or at most CLOSE_POINTS; None when a side has one seed (no estimate) and
    the difference is larger than CLOSE_POINTS."""
    diff = 100 * abs(method["val_acc_mean"] - dense["val_acc_mean"])
    if diff <= CLOSE_POINTS:
        return True
    if method["n_seeds"] < 2 or dense["n_seeds"] < 2:
        return None
    se = 100 * math.sqrt(method["val_acc_std"] ** 2 / method["n_seeds"] + dense["val_acc_std"] ** 2 / dense["n_seeds"])
    return bool(diff <= 2 * se)


def _modes(summary: pd.DataFrame, arch: str) -> list[str]:
    part = summary[(summary["arch"] == arch) & (summary["method"] == DENSE)]
    return [m for m in ("full", "linear") if m in set(part["finetuning"])]


def _dense_means(summary: pd.DataFrame, arch: str, mode: str) -> pd.Series:
    part = summary[(summary["arch"] == arch) & (summary["finetuning"] == mode) & (summary["method"] == DENSE)]
    return part.set_index("dataset")["val_acc_mean"] * 100


def full_vs_linear(summary: pd.DataFrame, arch: str) -> dict | None:
    """Dense full fine-tuning against Dense linear probing on the datasets both have: counts and means (%)."""
    if _modes(summary, arch) != ["full", "linear"]:
        return None
    full, linear = _dense_means(summary, arch, "full"), _dense_means(summary, arch, "linear")
    both = full.index.intersection(linear.index)
    if both.empty:
        return None
    return {"datasets": len(both), "full_above": int((full[both] > linear[both]).sum()),
            "full": float(full[both].mean()), "linear": float(linear[both].mean())}


def average_delta(summary: pd.DataFrame, arch: str, mode: str, method: str, sparsity: float) -> float | None:
    """method@sparsity minus Dense, averaged over the datasets it has (points); None when absent."""
    try:
        delta = delta_table(summary, finetuning=mode, arch=arch)
    except UserError:             # no Dense or no such mode: nothing to compare
        return None
    label = f"{method}@{sparsity_label(sparsity)}"
    return float(delta.at[label, AVERAGE]) if label in delta.index else None


def average_delta_noise(summary: pd.DataFrame, arch: str, mode: str, method: str, sparsity: float) -> float | None:
    """Two standard errors (points) of `average_delta`, from the seeds' spread on each dataset; None with one seed."""
    part = summary[(summary["arch"] == arch) & (summary["finetuning"] == mode)]
    dense = part[part["method"] == DENSE].set_index("dataset")
    rows = part[(part["method"] == method) & (part["sparsity"] == sparsity)]
    variances = []
    for _, row in rows.iterrows():
        if row["dataset"] not in dense.index:
            continue
        base = dense.loc[row["dataset"]]
        if row["n_seeds"] < 2 or base["n_seeds"] < 2:
            return None
        variances.append(row["val_acc_std"] ** 2 / row["n_seeds"] + base["val_acc_std"] ** 2 / base["n_seeds"])
    return 2 * 100 * math.sqrt(sum(variances)) / len(variances) if variances else None


def noise_verdicts(summary: pd.DataFrame, arch: str, mode: str) -> dict[tuple[str, float], tuple[int, int]]:
    """(method, sparsity) -> (datasets within noise of Dense, datasets compared)."""
    part = summary[(summary["arch"] == arch) & (summary["finetuning"] == mode)]
    dense = part[part["method"] == DENSE].set_index("dataset")
    out: dict[tuple[str, float], tuple[int, int]] = {}
    for (method, sparsity), rows in part[part["method"] != DENSE].groupby(["method", "sparsity"], sort=False):
        verdicts = [within_noise(row, dense.loc[row["dataset"]]) for _, row in rows.iterrows()
                    if row["dataset"] in dense.index]
        out[(method, sparsity)] = (sum(v is True for v in verdicts), len(verdicts))
    return out


def method_ranking(summary: pd.DataFrame, arch: str, mode: str, methods: list[str]) -> list[str]:
    """`methods` ordered best first by mean rank across datasets and sparsities (among those present)."""
    try:
        ranks = mean_rank(summary, finetuning=mode, arch=arch)
    except UserError:
        return []
    ranks = ranks[ranks["method"].isin(methods)]
    return list(ranks.groupby("method")["mean_rank"].mean().sort_values(kind="stable").index)


def findings_section(data: pd.DataFrame, *, paper: pd.DataFrame | None = None) -> list[str]:
    """Markdown lines of a 'What this shows' section for every architecture of `data` with Dense results (`paper`:
    the paper's results, summarised beside ours when given; not beside a detector's, whose points are mAP's)."""
    summary = summarize(data)
    archs = [a for a in dict.fromkeys(summary["arch"]) if _modes(summary, a)]
    if not archs:
        return ["## What this shows", "",
                f"Nothing to weigh yet: the study's findings compare sparse against dense upstreams, and these results "
                f"have no `{DENSE}` rows. Run the dense upstream on the same datasets and modes (its rows are labelled "
                f"`{DENSE}`, or name them so with `--model_label {DENSE}`).", ""]
    lines = ["## What this shows", "",
             f"The paper's two main findings, checked on these results (the paper: {PAPER_ARCH} on its 12 datasets, "
             "3-5 seeds). 'Within noise' of Dense: the mean differs by at most "
             f"{CLOSE_POINTS:g} point or by at most two standard errors of the difference over seeds.", ""]
    for arch in archs:
        detector = score_label(summary[summary["arch"] == arch]) == MAP_LABEL
        paper_summary = summarize(paper) if paper is not None and not detector else None
        lines += [f"### {arch}", ""]
        if detector:
            lines += ["(Scores are mAP@0.5:0.95 points; the paper has no detection results to set beside them.)", ""]
        lines += _finding_full_above_linear(summary, paper_summary, arch)
        lines += _finding_close_at_80(summary, paper_summary, arch)
        for mode in _modes(summary, arch):
            lines += _noise_lines(summary, arch, mode)
            lines += _order_line(summary, paper_summary, arch, mode)
        lines.append("")
    return lines


def _finding_full_above_linear(summary, paper, arch) -> list[str]:
    ours = full_vs_linear(summary, arch)
    if ours is None:
        return []
    theirs = full_vs_linear(paper, PAPER_ARCH) if paper is not None else None
    holds = ours["full_above"] == ours["datasets"]
    paper_text = (f"the paper: full above linear on {theirs['full_above']} of {theirs['datasets']} datasets "
                  f"(Dense, mean {theirs['full']:.1f}% vs {theirs['linear']:.1f}%)" if theirs else "")
    return [f"1. **Full fine-tuning above linear probing** -- {'holds' if holds else 'does not hold'} here: Dense "
            f"full fine-tuning scores above its linear probe on {ours['full_above']} of {ours['datasets']} "
            f"dataset(s) (mean {ours['full']:.1f}% vs {ours['linear']:.1f}%)" + (f"; {paper_text}." if paper_text
                                                                                  else "."), ""]


def _finding_close_at_80(summary, paper, arch) -> list[str]:
    if "full" not in _modes(summary, arch):
        return []
    ours = {m: average_delta(summary, arch, "full", m, 0.8) for m in PROGRESSIVE}
    ours = {m: d for m, d in ours.items() if d is not None}
    if not ours:
        return []
    theirs = {m: average_delta(paper, PAPER_ARCH, "full", m, 0.8) for m in PROGRESSIVE} if paper is not None else {}
    noise = {m: average_delta_noise(summary, arch, "full", m, 0.8) for m in ours}
    if all(d >= -CLOSE_POINTS for d in ours.values()):
        verdict = "holds"
    elif all(d + (noise[m] or 0.0) >= -CLOSE_POINTS for m, d in ours.items()):
        verdict = f"holds within noise (a difference of {CLOSE_POINTS:g} point is inside two standard errors)"
    else:
        verdict = "does not hold"
    here = ", ".join(f"{m} {d:+.1f}" + (f" ± {noise[m]:.1f}" if noise[m] is not None else "")
                     for m, d in ours.items())
    there = ", ".join(f"{m} {d:+.1f}" for m, d in theirs.items() if d is not None)
    return [f"2. **At 80% sparsity, AC/DC and GMP within about {CLOSE_POINTS:g} point of Dense under full "
            f"fine-tuning** -- {verdict} here: {here} points (mean over datasets"
            + (", ± two standard errors over seeds)" if any(v is not None for v in noise.values()) else ")")
            + (f"; the paper: {there} points." if there else "."), ""]


def _noise_lines(summary, arch, mode) -> list[str]:
    verdicts = noise_verdicts(summary, arch, mode)
    if not verdicts:
        return []
    by_sparsity: dict[float, list[str]] = {}
    for (method, sparsity), (close, total) in verdicts.items():
        if total and close == total:
            by_sparsity.setdefault(sparsity, []).append(method)
    sparsities = sorted({s for _, s in verdicts})
    parts = [f"{sparsity_label(s)}: {', '.join(by_sparsity[s]) if s in by_sparsity else 'none'}" for s in sparsities]
    return [f"- {FINETUNING_TITLES.get(mode, mode)}: within noise of Dense on every dataset -- {'; '.join(parts)}."]


def _order_line(summary, paper, arch, mode) -> list[str]:
    methods = [m for m in dict.fromkeys(summary.loc[summary["arch"] == arch, "method"]) if m != DENSE]
    ours = method_ranking(summary, arch, mode, methods)
    if len(ours) < 2:
        return []
    text = f"  Methods by mean rank here: {' > '.join(ours)}"
    if paper is not None:
        common = [m for m in ours if m in set(paper["method"])]
        theirs = method_ranking(paper, PAPER_ARCH, mode, common)
        if len(theirs) >= 2:
            same = [m for m in ours if m in common] == theirs
            text += (f"; the paper, for the methods it has: {' > '.join(theirs)} "
                     f"({'the same order' if same else 'another order'})")
    return [text + "."]

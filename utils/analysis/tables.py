"""Pure analysis of tidy results (utils.analysis.results): per-cell statistics, paper-style tables, ranks.

Accuracies are fractions in the tidy and summary frames, percent in the wide tables, and
differences to Dense are in percentage points. `data` arguments take either the tidy frame
from `load_results` or the output of `summarize`.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import re

import pandas as pd

from utils.analysis.results import (
    ARCH_ORDER,
    DATASET_ORDER,
    DENSE,
    FINETUNING_MODES,
    METHOD_ORDER,
    check_tidy,
    sparsity_label,
)
from utils.errors import UserError

GROUP_COLUMNS = ["finetuning", "arch", "dataset", "method", "sparsity"]
AVERAGE = "Average"
FINETUNING_TITLES = {"full": "Full fine-tuning", "linear": "Linear probing (frozen backbone)"}
MISSING = "–"
log = logging.getLogger(__name__)


def method_order(data: pd.DataFrame, *, dense: str = DENSE) -> list[str]:
    """Dense first, then the paper's methods in its order, then others in order of first appearance."""
    methods = list(dict.fromkeys(data["method"]))
    known = [m for m in METHOD_ORDER if m in methods and m != dense]
    return ([dense] if dense in methods else []) + known + [m for m in methods if m != dense and m not in known]


def dataset_order(data: pd.DataFrame) -> list[str]:
    """The paper's dataset order, then any other datasets in order of first appearance."""
    present = list(dict.fromkeys(data["dataset"]))
    return [d for d in DATASET_ORDER if d in present] + [d for d in present if d not in DATASET_ORDER]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed) and seed count per (finetuning, arch, dataset, method, sparsity)."""
    if "val_acc_mean" in df.columns:
        return df
    check_tidy(df)
    # a detector's score is mAP: the task (results.csv's column, absent from the paper's files) goes along
    task = {"task": ("task", "first")} if "task" in df.columns else {}
    out = (df.groupby(GROUP_COLUMNS, sort=False)
           .agg(val_acc_mean=("val_acc", "mean"), val_acc_std=("val_acc", "std"),
                n_seeds=("val_acc", "count"), seeds=("seed", lambda s: " ".join(map(str, sorted(s)))), **task)
           .reset_index())
    ranks = {"finetuning": _positions([*FINETUNING_MODES, *dict.fromkeys(df["finetuning"])]),
             "arch": _positions([*ARCH_ORDER, *dict.fromkeys(df["arch"])]), "dataset": _positions(dataset_order(df)),
             "method": _positions(method_order(df))}
    return out.sort_values(GROUP_COLUMNS, key=lambda col: col.map(ranks[col.name]) if col.name in ranks
                           else col, kind="stable").reset_index(drop=True)


def _positions(values) -> dict:
    return {v: i for i, v in reversed(list(enumerate(values)))}


def combos(data: pd.DataFrame) -> list[tuple[str, str]]:
    """The (finetuning, arch) pairs present, in summary order."""
    s = summarize(data)
    return list(dict.fromkeys(zip(s["finetuning"], s["arch"])))


def select(data: pd.DataFrame, *, finetuning: str, arch: str) -> pd.DataFrame:
    """Summary rows of one (finetuning, arch) pair; an absent pair is a UserError listing the others."""
    s = summarize(data)
    part = s[(s["finetuning"] == finetuning) & (s["arch"] == arch)]
    if part.empty:
        valid = ", ".join(f"{f}/{a}" for f, a in combos(s))
        raise UserError(f"no results for finetuning={finetuning!r} arch={arch!r}; present: {valid}")
    return part


def row_label(method: str, sparsity: float, *, dense: str = DENSE) -> str:
    """'Dense' for the dense baseline, else 'AC/DC@90%'."""
    return method if method == dense and sparsity == 0 else f"{method}@{sparsity_label(sparsity)}"


def wide_table(data: pd.DataFrame, *, finetuning: str, arch: str, value: str = "val_acc_mean",
               dense: str = DENSE) -> pd.DataFrame:
    """Rows method@sparsity (Dense first, then by sparsity), columns datasets; accuracies in percent."""
    part = select(data, finetuning=finetuning, arch=arch)
    methods = _positions(method_order(part, dense=dense))
    part = part.assign(row=[row_label(m, sp, dense=dense) for m, sp in zip(part["method"], part["sparsity"])],
                       _order=[(m != dense, sp, methods[m]) for m, sp in zip(part["method"], part["sparsity"])])
    rows = list(dict.fromkeys(part.sort_values("_order", kind="stable")["row"]))
    table = part.pivot(index="row", columns="dataset", values=value).reindex(index=rows, columns=dataset_order(part))
    table.index.name, table.columns.name = None, None
    return table * 100 if value.startswith("val_acc") else table


def accuracy_table(data: pd.DataFrame, *, finetuning: str, arch: str, dense: str = DENSE) -> pd.DataFrame:
    """Mean accuracy (%) per cell plus `Average` over datasets (NaN unless the row covers all of them)."""
    table = wide_table(data, finetuning=finetuning, arch=arch, dense=dense)
    table[AVERAGE] = table.mean(axis=1).where(table.notna().all(axis=1))
    return table


def delta_table(data: pd.DataFrame, *, finetuning: str, arch: str, dense: str = DENSE) -> pd.DataFrame:
    """Accuracy minus Dense's on the same dataset (points); `Average` over the datasets a row has."""
    table = wide_table(data, finetuning=finetuning, arch=arch, dense=dense)
    if dense not in table.index:
        raise UserError(f"no {dense!r} rows for {finetuning}/{arch}: the difference to dense needs the "
                        "dense baseline; add its results file")
    delta = table.drop(index=dense) - table.loc[dense]
    delta[AVERAGE] = delta.mean(axis=1)
    return delta


def paper_table(data: pd.DataFrame, *, finetuning: str, arch: str, with_delta: bool = False,
                dense: str = DENSE) -> pd.DataFrame:
    """Strings 'mean ± std' (%) as in the paper; with_delta appends '(+Δ points to Dense)'."""
    mean = accuracy_table(data, finetuning=finetuning, arch=arch, dense=dense)
    std = wide_table(data, finetuning=finetuning, arch=arch, value="val_acc_std", dense=dense)
    delta = (delta_table(data, finetuning=finetuning, arch=arch, dense=dense)
             if with_delta else pd.DataFrame(index=mean.index, columns=mean.columns))
    out = pd.DataFrame(MISSING, index=mean.index, columns=mean.columns, dtype=object)
    for row in mean.index:
        for col in mean.columns:
            m = mean.at[row, col]
            if pd.isna(m):
                continue
            s = std.at[row, col] if col in std.columns else float("nan")
            cell = f"{m:.2f} ± {s:.2f}" if pd.notna(s) else f"{m:.2f}"
            d = delta.at[row, col] if row in delta.index else float("nan")
            out.at[row, col] = cell + (f" ({d:+.2f})" if pd.notna(d) else "")
    return out


def average_over_datasets(data: pd.DataFrame, *, dense: str = DENSE) -> pd.DataFrame:
    """Per (finetuning, arch, method, sparsity): mean accuracy over datasets (fraction), n_datasets, complete."""
    s = summarize(data)
    out = (s.groupby(["finetuning", "arch", "method", "sparsity"], sort=False)
           .agg(val_acc_mean=("val_acc_mean", "mean"), n_datasets=("dataset", "nunique")).reset_index())
    total = s.groupby(["finetuning", "arch"])["dataset"].nunique()
    out["complete"] = [n == total[(f, a)] for f, a, n in zip(out["finetuning"], out["arch"], out["n_datasets"])]
    return out


def mean_rank(data: pd.DataFrame, *, finetuning: str, arch: str, dense: str = DENSE) -> pd.DataFrame:
    """Mean rank (1 = best, ties averaged) of methods across datasets at each sparsity, Dense excluded.

    Methods are ranked among those present on each dataset; sparsities with a single method are dropped.
    """
    part = select(data, finetuning=finetuning, arch=arch)
    part = part[part["method"] != dense].copy()
    part["rank"] = part.groupby(["sparsity", "dataset"])["val_acc_mean"].rank(ascending=False, method="average")
    out = (part.groupby(["sparsity", "method"], sort=False)
           .agg(mean_rank=("rank", "mean"), n_datasets=("dataset", "nunique")).reset_index())
    out["n_methods"] = out["sparsity"].map(part.groupby("sparsity")["method"].nunique())
    out = out[out["n_methods"] > 1].sort_values(["sparsity", "mean_rank"], kind="stable")
    return out.assign(finetuning=finetuning, arch=arch)[
        ["finetuning", "arch", "sparsity", "method", "mean_rank", "n_datasets", "n_methods"]].reset_index(drop=True)


def rank_table(data: pd.DataFrame, *, finetuning: str, arch: str, dense: str = DENSE) -> pd.DataFrame:
    """mean_rank as a wide table: rows methods, columns sparsities ('80%')."""
    ranks = mean_rank(data, finetuning=finetuning, arch=arch, dense=dense)
    table = ranks.pivot(index="method", columns="sparsity", values="mean_rank")
    table = table.reindex(index=[m for m in method_order(ranks) if m in table.index])
    table.columns = [sparsity_label(c) for c in table.columns]
    table.index.name = None
    return table


# ---- formatting and the report written by analyze.py -------------------------------------------

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "–": "--", "Δ": r"$\Delta$"}


def _cell(value, float_format: str = "{:.2f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return float_format.format(value) if isinstance(value, float) else str(value)


def to_markdown(table: pd.DataFrame, *, corner: str = "", float_format: str = "{:.2f}") -> str:
    """A Markdown pipe table (floats as float_format, NaN as '–'); no tabulate dependency."""
    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"
    lines = [row([corner, *table.columns]), "|" + "|".join([":---", *["---:"] * len(table.columns)]) + "|"]
    lines += [row([_cell(idx), *(_cell(v, float_format) for v in values)])
              for idx, values in zip(table.index, table.to_numpy(dtype=object))]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX specials; '±' -> $\\pm$, '–' -> '--'."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: pd.DataFrame, *, caption: str | None = None, float_format: str = "{:.2f}") -> str:
    """A booktabs tabular (pandas Styler.to_latex when jinja2 is installed, else written directly)."""
    body = pd.DataFrame([[latex_escape(_cell(v, float_format)) for v in row] for row in table.to_numpy(dtype=object)],
                        index=[latex_escape(i) for i in table.index], columns=[latex_escape(c) for c in table.columns])
    column_format = "l" + "r" * len(body.columns)
    if _has_jinja2():
        return body.style.to_latex(column_format=column_format, hrules=True,
                                   caption=latex_escape(caption) if caption else None)
    lines = [rf"\begin{{tabular}}{{{column_format}}}", r"\toprule", " & ".join(["", *body.columns]) + r" \\",
             r"\midrule", *(" & ".join([idx, *row]) + r" \\" for idx, row in zip(body.index, body.to_numpy())),
             r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines = [r"\begin{table}", rf"\caption{{{latex_escape(caption)}}}", *lines, r"\end{table}"]
    return "\n".join(lines) + "\n"


def _has_jinja2() -> bool:
    return importlib.util.find_spec("jinja2") is not None


def slug(finetuning: str, arch: str | None = None) -> str:
    """File-name stem: 'full_resnet50'."""
    return "_".join(re.sub(r"[^a-z0-9]+", "", p.lower()) for p in (finetuning, arch) if p is not None)

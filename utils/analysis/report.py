"""The report: every table (Markdown, CSV, LaTeX) and figure (PNG, PDF) of a set of results, in one folder."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pandas as pd

from utils.analysis.findings import findings_section
from utils.analysis.plots import (
    plot_accuracy_vs_sparsity,
    plot_average_vs_sparsity,
    plot_delta_heatmap,
    save_figure,
    score_title,
)
from utils.analysis.results import (
    DENSE,
    PAPER_RESULTS_DIR,
    find_duplicates,
    load_results,
    read_result_file,
    resolve_duplicates,
    result_files,
)
from utils.analysis.tables import (
    FINETUNING_TITLES,
    combos,
    delta_table,
    mean_rank,
    paper_table,
    rank_table,
    select,
    slug,
    summarize,
    to_latex,
    to_markdown,
)
from utils.errors import UserError
from utils.io import atomic_write_text

log = logging.getLogger(__name__)


def _span(values: pd.Series) -> str:
    low, high = values.min(), values.max()
    return f"{low}" if low == high else f"{low}–{high}"


def analyze_files(paths, out_dir: str | Path, *, duplicates: str = "first", figures: bool = True) -> list[Path]:
    """Load result files (duplicates reported to out_dir/duplicates.csv) and write the full report."""
    files = result_files(paths)
    raw = pd.concat([read_result_file(p) for p in files], ignore_index=True)
    dups = find_duplicates(raw)
    df = resolve_duplicates(raw, keep=duplicates)
    extra = {"duplicates.csv": dups.to_csv(index=False)} if not dups.empty else {}
    return write_report(df, out_dir, figures=figures, extra_files=extra,
                        notes=[f"`{p}`: {(raw['source'] == str(p)).sum()} rows" for p in files]
                        + ([f"{len(dups)} rows in duplicate groups, see `duplicates.csv`; kept: {duplicates}"]
                           if extra else []))


def write_report(df: pd.DataFrame, out_dir: str | Path, *, figures: bool = True,
                 extra_files: dict[str, str] | None = None, notes: list[str] | None = None,
                 findings: bool = True) -> list[Path]:
    """Write summary CSVs, per-(finetuning, arch) tables (Markdown, CSV, LaTeX) and figures; return the paths.
    `findings`: a 'What this shows' section first (the paper's two main findings checked on these results, the
    paper's figures beside)."""
    out, written = Path(out_dir), []
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give --out a folder (new or existing)")

    def write(rel: str, text: str) -> None:
        atomic_write_text(out / rel, text)
        written.append(out / rel)

    summary = summarize(df)
    write("summary.csv", summary.to_csv(index=False))
    for name, text in (extra_files or {}).items():
        write(name, text)
    md = ["# Transfer results", "", *(f"- {n}" for n in notes or []), ""]
    if findings:
        md += findings_section(df, paper=_paper_results())
    ranks = []
    for finetuning, arch in combos(summary):
        md += _combo_section(summary, write, finetuning=finetuning, arch=arch, ranks=ranks)
        if figures:
            has_dense = (select(summary, finetuning=finetuning, arch=arch)["method"] == DENSE).any()
            md += _write_figures(summary, out, written, finetuning=finetuning, arch=arch, has_dense=has_dense)
    if figures:
        for arch in dict.fromkeys(a for _, a in combos(summary)):
            md += _write_average_figure(summary, out, written, arch=arch)
    if ranks:
        write("mean_rank.csv", pd.concat(ranks, ignore_index=True).to_csv(index=False))
    write("report.md", "\n".join(md) + "\n")
    return written


def _paper_results() -> pd.DataFrame | None:
    """The paper's ResNet-50 results (raw_results/; the findings compare with those), or None where they cannot be
    read (the findings then go without)."""
    try:
        return load_results([PAPER_RESULTS_DIR / f"{mode}_transfer_results.txt" for mode in ("full", "linear")])
    except UserError as err:
        log.warning("the paper's results are unavailable (%s): findings without the paper's figures", err)
        return None


def _combo_section(summary: pd.DataFrame, write: Callable[[str, str], None], *, finetuning: str, arch: str,
                   ranks: list[pd.DataFrame]) -> list[str]:
    """One (finetuning, arch) section: accuracy, difference to Dense and rank tables, in every format."""
    part, stem = select(summary, finetuning=finetuning, arch=arch), slug(finetuning, arch)
    title = f"{FINETUNING_TITLES.get(finetuning, finetuning)}, {arch}"
    score = score_title(arch)
    md = [f"## {title}", "", f"Seeds per cell: {_span(part['n_seeds'])}; std is the sample std over seeds.", "",
          f"### {score}, mean ± std", ""]
    table = paper_table(summary, finetuning=finetuning, arch=arch)
    md.append(to_markdown(table))
    write(f"tables/{stem}_accuracy.csv", table.to_csv())
    write(f"tables/{stem}_accuracy.tex", to_latex(table, caption=f"{title}: {score[0].lower()}{score[1:]}"))
    if (part["method"] == DENSE).any():
        delta = delta_table(summary, finetuning=finetuning, arch=arch)
        md += ["### Difference to Dense (percentage points)", "", to_markdown(delta, float_format="{:+.2f}")]
        write(f"tables/{stem}_delta.csv", delta.to_csv(float_format="%.2f"))
        write(f"tables/{stem}_delta.tex", to_latex(delta, caption=f"{title}: difference to Dense (points)",
                                                   float_format="{:+.2f}"))
    rank = rank_table(summary, finetuning=finetuning, arch=arch)
    if not rank.empty:
        ranks.append(mean_rank(summary, finetuning=finetuning, arch=arch))
        md += ["### Mean rank across datasets at equal sparsity (1 = best)", "", to_markdown(rank, corner="method")]
        write(f"tables/{stem}_rank.csv", rank.to_csv(float_format="%.2f"))
        write(f"tables/{stem}_rank.tex", to_latex(rank, caption=f"{title}: mean rank across datasets"))
    return md


def _write_figures(summary, out: Path, written: list[Path], *, finetuning: str, arch: str,
                   has_dense: bool) -> list[str]:
    stem = slug(finetuning, arch)
    figs = {f"{stem}_accuracy_vs_sparsity": plot_accuracy_vs_sparsity(summary, finetuning=finetuning, arch=arch)}
    if has_dense:
        figs[f"{stem}_delta_heatmap"] = plot_delta_heatmap(summary, finetuning=finetuning, arch=arch)
    lines = []
    for name, fig in figs.items():
        written += save_figure(fig, out / "figures" / name)
        lines += [f"![{name}](figures/{name}.png)", ""]
    return lines


def _write_average_figure(summary, out: Path, written: list[Path], *, arch: str) -> list[str]:
    try:
        fig = plot_average_vs_sparsity(summary, arch=arch)
    except UserError as err:
        log.info("skipping the average figure: %s", err)
        return []
    name = f"{slug(arch)}_average_vs_sparsity"
    written += save_figure(fig, out / "figures" / name)
    return [f"## {arch}: average over datasets", "", f"![{name}](figures/{name}.png)", ""]

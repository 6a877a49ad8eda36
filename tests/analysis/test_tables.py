"""Analysis tables checked against hand-computed values; figures; the analyze.py entry point."""
from __future__ import annotations

import csv
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

import analyze
from utils.analysis import (
    AVERAGE,
    PAPER_RESULTS_DIR,
    accuracy_table,
    delta_table,
    load_results,
    mean_rank,
    paper_table,
    plot_accuracy_vs_sparsity,
    plot_average_vs_sparsity,
    plot_delta_heatmap,
    rank_table,
    save_figure,
    summarize,
    to_latex,
    to_markdown,
    wide_table,
)
from utils.analysis import tables as analysis
from utils.errors import UserError
from utils.paths import REPO_ROOT as REPO  # noqa: E402

LABELS = {"aircraft": "Aircraft", "birds": "Birdsnap", "caltech101": "Caltech-101", "caltech256": "Caltech-256",
          "cars": "Cars", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "dtd": "DTD", "food101": "Food-101",
          "pets": "Pets", "SUN": "SUN397", "flowers": "Flowers"}


def hand_accuracies(name: str, dset: str, model: str, sparsity: float) -> list[float]:
    """Accuracies (%) of one cell, read with the csv module only."""
    with open(PAPER_RESULTS_DIR / name, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [100 * float(r[4]) for r in rows if r and r[0] == dset and r[1] == model and float(r[2]) == sparsity]


@pytest.fixture(scope="module")
def paper():
    return summarize(load_results())


@pytest.mark.parametrize("name, finetuning, arch, dset, model, sparsity, n", [
    ("full_transfer_results.txt", "full", "ResNet-50", "aircraft", "Dense", 0.0, 3),
    ("full_transfer_results.txt", "full", "ResNet-50", "pets", "AC/DC", 0.8, 4),
    ("full_transfer_results.txt", "full", "ResNet-50", "SUN", "STR", 0.98, 3),
    ("linear_transfer_results.txt", "linear", "ResNet-50", "birds", "LTH-T", 0.95, 5),
    ("linear_mobilenet_transfer_results.txt", "linear", "MobileNetV1", "dtd", "M-FAC", 0.89, 5),
])
def test_paper_cells_match_hand_computation(paper, name, finetuning, arch, dset, model, sparsity, n):
    accs = hand_accuracies(name, dset, model, sparsity)
    assert len(accs) == n
    mean, std = wide_table(paper, finetuning=finetuning, arch=arch), \
        wide_table(paper, finetuning=finetuning, arch=arch, value="val_acc_std")
    row = model if model == "Dense" else f"{model}@{100 * sparsity:g}%"
    assert mean.at[row, LABELS[dset]] == pytest.approx(statistics.mean(accs), abs=1e-9)
    assert std.at[row, LABELS[dset]] == pytest.approx(statistics.stdev(accs), abs=1e-9)
    cell = paper_table(paper, finetuning=finetuning, arch=arch).at[row, LABELS[dset]]
    assert cell == f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"


def test_paper_table_layout_average_and_delta(paper):
    table = accuracy_table(paper, finetuning="full", arch="ResNet-50")
    assert list(table.columns) == [*LABELS.values(), AVERAGE]
    assert table.index[0] == "Dense" and len(table) == 1 + 6 * 3 + 1  # Dense, 6 methods x 3, STR@98%
    assert list(table.index[1:7]) == ["AC/DC@80%", "RigL ERK 1x@80%", "RigL ERK 5x@80%", "LTH-T@80%",
                                      "STR@80%", "WoodFisher@80%"]
    name = "full_transfer_results.txt"
    dense = {d: statistics.mean(hand_accuracies(name, d, "Dense", 0.0)) for d in LABELS}
    wf = {d: statistics.mean(hand_accuracies(name, d, "WoodFisher", 0.9)) for d in LABELS}
    assert table.at["WoodFisher@90%", AVERAGE] == pytest.approx(statistics.mean(wf.values()))
    delta = delta_table(paper, finetuning="full", arch="ResNet-50")
    assert "Dense" not in delta.index
    assert delta.at["WoodFisher@90%", "Cars"] == pytest.approx(wf["cars"] - dense["cars"])
    assert delta.at["WoodFisher@90%", AVERAGE] == pytest.approx(statistics.mean(wf[d] - dense[d] for d in LABELS))
    with_delta = paper_table(paper, finetuning="full", arch="ResNet-50", with_delta=True)
    assert with_delta.at["WoodFisher@90%", "Cars"].endswith(f"({wf['cars'] - dense['cars']:+.2f})")


def test_full_mobilenet_has_one_seed_and_no_std(paper):
    table = paper_table(paper, finetuning="full", arch="MobileNetV1")
    assert table.at["STR@75%", "Aircraft"] == "74.43"  # the first of the duplicated rows, no '±'


def tiny_results(tmp_path: Path, *, with_dense: bool = True) -> Path:
    """A results.csv in the project's format: 2 datasets, 2 methods at 2 sparsities, 2 seeds."""
    rows = ["dset,model,sparsity,seed,val_acc,finetuning,arch,checkpoint,lr,epochs,run_dir"]
    acc = {"Dense": 0.90, "A": 0.88, "B": 0.86}
    for dset, offset in (("cifar10", 0.0), ("dtd", -0.2)):
        for method, sparsities in (("Dense", [0.0]), ("A", [0.8, 0.9]), ("B", [0.8, 0.9])):
            if method == "Dense" and not with_dense:
                continue
            for sparsity in sparsities:
                for seed in (1, 2):
                    value = acc[method] + offset - 0.05 * sparsity + 0.01 * seed
                    rows.append(f"{dset},{method},{sparsity},{seed},{value:.4f},full,resnet50,c.pt,0.1,2,runs/x")
    path = tmp_path / "results.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_mean_rank_on_a_known_example(tmp_path):
    path = tmp_path / "full_rank.csv"
    path.write_text("dset,model,sparsity,seed,val_acc\n"
                    "cifar10,A,0.9,1,0.9\ncifar10,B,0.9,1,0.8\ncifar10,C,0.9,1,0.7\n"
                    "dtd,A,0.9,1,0.5\ndtd,B,0.9,1,0.6\ndtd,C,0.9,1,0.5\n"
                    "pets,A,0.9,1,0.3\npets,C,0.9,1,0.4\ncifar10,Dense,0,1,0.95\ncifar10,A,0.5,1,0.9\n")
    ranks = mean_rank(load_results([path]), finetuning="full", arch="ResNet-50")
    # cifar10: A1 B2 C3; dtd: B1, A and C tie at 2.5; pets (no B): C1 A2; sparsity 0.5 has one method
    got = {(r.sparsity, r.method): (r.mean_rank, r.n_datasets) for r in ranks.itertuples()}
    assert got == {(0.9, "A"): pytest.approx(((1 + 2.5 + 2) / 3, 3)), (0.9, "B"): (1.5, 2),
                   (0.9, "C"): pytest.approx(((3 + 2.5 + 1) / 3, 3))}
    assert rank_table(load_results([path]), finetuning="full", arch="ResNet-50").columns.tolist() == ["90%"]


def test_figures_have_labels_units_and_legends(tmp_path):
    df = load_results([tiny_results(tmp_path)])
    fig = plot_accuracy_vs_sparsity(df, finetuning="full", arch="ResNet-50")
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["CIFAR-10", "DTD"]
    assert visible[0].get_ylabel() == "Top-1 accuracy (%)" and visible[0].get_xlabel() == "Sparsity (%)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Dense (band: ± std)", "A", "B"]
    avg = plot_average_vs_sparsity(df, arch="ResNet-50")
    assert "Mean top-1 accuracy (%)" in avg.axes[0].get_ylabel()
    heat = plot_delta_heatmap(df, finetuning="full", arch="ResNet-50")
    assert [t.get_text() for t in heat.axes[0].get_xticklabels()] == ["CIFAR-10", "DTD", AVERAGE]
    assert any("points" in ax.get_ylabel() for ax in heat.axes)  # the colour bar names its unit
    paths = save_figure(fig, tmp_path / "figs" / "acc")
    assert [p.name for p in paths] == ["acc.png", "acc.pdf"] and all(p.stat().st_size > 1000 for p in paths)


def test_markdown_and_latex_tables(tmp_path, monkeypatch):
    table = paper_table(load_results([tiny_results(tmp_path)]), finetuning="full", arch="ResNet-50")
    md = to_markdown(table)
    assert md.splitlines()[0] == "|  | CIFAR-10 | DTD | Average |"
    assert md.splitlines()[2].startswith("| Dense | 91.50 ± 0.71 | 71.50 ± 0.71 | 81.50 |")
    # Styler.to_latex needs jinja2 (installed with torch); the hand-written fallback is always checked
    for jinja in [True] * analysis._has_jinja2() + [False]:
        monkeypatch.setattr(analysis, "_has_jinja2", lambda: jinja)
        tex = to_latex(table, caption="Top-1 (%)")
        assert r"\toprule" in tex and r"\bottomrule" in tex and r"\caption{Top-1 (\%)}" in tex
        assert r"A@80\% & 85.50 $\pm$ 0.71 & 65.50 $\pm$ 0.71 & 75.50 \\" in tex


def test_delta_needs_dense(tmp_path):
    df = load_results([tiny_results(tmp_path, with_dense=False)])
    with pytest.raises(UserError, match="no 'Dense' rows for full/ResNet-50"):
        delta_table(df, finetuning="full", arch="ResNet-50")
    with pytest.raises(UserError, match="no results for finetuning='linear'.*present: full/ResNet-50"):
        accuracy_table(df, finetuning="linear", arch="ResNet-50")


def test_analyze_main_writes_tables_and_figures(tmp_path, capsys):
    out = tmp_path / "out"
    analyze.main([str(tiny_results(tmp_path)), "--out", str(out)])
    printed = capsys.readouterr().out.split()
    expected = {"summary.csv", "mean_rank.csv", "report.md", "tables/full_resnet50_accuracy.csv",
                "tables/full_resnet50_accuracy.tex", "tables/full_resnet50_delta.csv", "tables/full_resnet50_delta.tex",
                "tables/full_resnet50_rank.csv", "tables/full_resnet50_rank.tex",
                *(f"figures/{stem}.{ext}" for stem in ("full_resnet50_accuracy_vs_sparsity",
                  "full_resnet50_delta_heatmap", "resnet50_average_vs_sparsity") for ext in ("png", "pdf"))}
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == expected and {str(out / p) for p in expected} == set(printed)
    report = (out / "report.md").read_text()
    assert "## Full fine-tuning, ResNet-50" in report and "![full_resnet50_delta_heatmap]" in report
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2 * 5 and summary["n_seeds"].eq(2).all()


def test_analyze_paper_results_tables_only(tmp_path, capsys):
    out = tmp_path / "paper"
    analyze.main(["--out", str(out), "--no-figures"])
    for stem in ("full_resnet50", "linear_resnet50", "full_mobilenetv1", "linear_mobilenetv1"):
        assert (out / "tables" / f"{stem}_accuracy.tex").is_file()
    dups = pd.read_csv(out / "duplicates.csv")
    assert len(dups) == 24
    assert "24 rows in duplicate groups" in (out / "report.md").read_text()


def test_analyze_cli_reports_user_errors_in_one_line(tmp_path):
    bad = tmp_path / "full_bad.csv"
    bad.write_text("dset,model,sparsity,seed,val_acc\ndtd,STR,0.9,1,95.1\n")
    proc = subprocess.run([sys.executable, "analyze.py", str(bad), "--out", str(tmp_path / "o")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {bad}:2: val_acc 95.1 is outside [0, 1]; "
                                                "it must be a fraction (write 0.8362, not 83.62)"]

"""Every figure the project writes keeps its text on the canvas at the size it is saved (issue 27, item 7): titles,
axis and colour-bar labels and legends of the report's figures, from one dataset to the paper's twelve, for
classification and detection results, and the notebooks' figures; detection figures name mAP, not accuracy."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from utils.analysis import (
    load_results,
    plot_accuracy_vs_sparsity,
    plot_average_vs_sparsity,
    plot_delta_heatmap,
    summarize,
)
from utils.analysis.plots import MAP_LABEL
from utils.paths import REPO_ROOT

SAVE_DPI = 150                       # save_figure's


def texts_off_canvas(fig: Figure, *, dpi: int = SAVE_DPI) -> list[str]:
    """What of `fig` reaches past its canvas, drawn at `dpi` (its saved size): matplotlib's own extent of everything
    drawn (titles, labels, tick labels it drew, legends, colour bars: what bbox_inches='tight' would measure), then,
    to name the culprits, the titles and labels outside."""
    FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    drawn = fig.get_tightbbox(renderer)               # inches
    width, height = fig.get_figwidth(), fig.get_figheight()
    tolerance = 1.5 / dpi
    if drawn.x0 >= -tolerance and drawn.y0 >= -tolerance and drawn.x1 <= width + tolerance \
            and drawn.y1 <= height + tolerance:
        return []
    off = [f"everything drawn spans {drawn.bounds} inches on a {width:.2f}x{height:.2f} canvas"]
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text().strip():
            box = text.get_window_extent(renderer)
            if box.x0 < -1 or box.y0 < -1 or box.x1 > fig.bbox.width + 1 or box.y1 > fig.bbox.height + 1:
                off.append(f"{text.get_text()!r} may be it: {box.bounds} px")
    return off


def texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def small_results(tmp_path: Path, *, task: str = "classification", datasets=("shapes",), long_method=False):
    """A results.csv as the demo writes it: Dense and two methods at 80/90/95%, two seeds, on `datasets`."""
    arch = "yolov5n" if task == "detection" else "resnet_small"
    methods = ["GMP", "AC/DC" + (" (ours: a long label for a method)" if long_method else "")]
    lines = ["dset,model,sparsity,seed,val_acc,map,finetuning,arch,task"]

    def score(value: str) -> str:            # a detector's row: val_acc empty, the score in map (as results.csv)
        return f",{value}" if task == "detection" else f"{value},"

    for d in datasets:
        for seed in (1, 2):
            lines.append(f"{d},Dense,0.0,{seed},{score(f'0.8{seed}')},full,{arch},{task}")
            for m in methods:
                for s in (0.8, 0.9, 0.95):
                    lines.append(f"{d},{m},{s},{seed},{score(f'0.{70 + seed + int(10 * s)}')},full,{arch},{task}")
    path = tmp_path / "results.csv"
    path.write_text("\n".join(lines) + "\n")
    return load_results([path])


def report_figures(data: pd.DataFrame, arch: str, finetuning: str = "full") -> dict[str, Figure]:
    return {"accuracy_vs_sparsity": plot_accuracy_vs_sparsity(data, finetuning=finetuning, arch=arch),
            "average": plot_average_vs_sparsity(data, arch=arch),
            "delta_heatmap": plot_delta_heatmap(data, finetuning=finetuning, arch=arch)}


@pytest.mark.parametrize("task, datasets, long_method", [
    ("classification", ("shapes",), False), ("classification", ("shapes", "digits"), True),
    ("detection", ("pasted_fashion",), False)], ids=["one_dataset", "two_datasets_long_label", "detection"])
def test_report_figures_keep_their_text_on_the_canvas(tmp_path, task, datasets, long_method):
    data = small_results(tmp_path, task=task, datasets=datasets, long_method=long_method)
    arch = "yolov5n" if task == "detection" else "resnet_small"
    for name, fig in report_figures(data, arch).items():
        assert texts_off_canvas(fig) == [], name


def test_the_papers_figures_keep_their_text_on_the_canvas():
    paper = summarize(load_results())
    for finetuning in ("full", "linear"):
        for name, fig in report_figures(paper, "ResNet-50", finetuning).items():
            assert texts_off_canvas(fig) == [], (finetuning, name)


def test_detection_figures_name_map_and_count_one_dataset_in_the_singular(tmp_path):
    figs = report_figures(small_results(tmp_path, task="detection", datasets=("pasted_fashion",)), "yolov5n")
    words = {name: texts(fig) for name, fig in figs.items()}
    assert MAP_LABEL in words["accuracy_vs_sparsity"] and "Top-1" not in words["accuracy_vs_sparsity"]
    assert "mAP vs sparsity" in words["accuracy_vs_sparsity"].replace("\n", " ")
    assert "Mean mAP@0.5:0.95" in words["average"] and "mean of 1 dataset)" in words["average"]
    assert "mAP minus Dense" in words["delta_heatmap"].replace("\n", " ")


def test_methods_at_one_sparsity_stay_apart(tmp_path):
    """Your runs beside the paper's (the analysis notebook's 'AC/DC (ours)'): each method has its own marker and
    its points are shifted along the sparsity axis, drawn above the earlier methods'."""
    data = small_results(tmp_path, long_method=True)
    fig = plot_accuracy_vs_sparsity(data, finetuning="full", arch="resnet_small")
    series = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}       # each method's errorbar
    assert len(series) == 2
    assert len({line.get_marker() for line in series.values()}) == 2
    assert len({tuple(line.get_xdata()) for line in series.values()}) == 2


def notebook_figure_cells(name: str) -> list[str]:
    cells = json.loads((REPO_ROOT / "notebooks" / name).read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and "plt.subplots" in "".join(c["source"])]


def test_the_notebooks_own_figures_keep_their_text_on_the_canvas(monkeypatch):
    """The sparse-quantized notebook's bar chart, built as its cell builds it from rows of its table's shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (cell,) = notebook_figure_cells("sparse_quantized_transfer.ipynb")
    rows = [{"model": m, "batch 64 (ms)": ms, "ONNX size (kB)": kb} for m, ms, kb in
            [("dense fp32", 120.0, 2900.0), ("90% sparse fp32", 118.0, 2900.0), ("90% sparse INT8", 150.0, 800.0),
             ("90% sparse, sparse engine", 60.0, 2900.0)]]
    monkeypatch.setattr(plt, "show", lambda: None)
    scope = {"plt": plt, "rows": rows, "THREADS": 2}
    exec(cell, scope)
    assert texts_off_canvas(scope["fig"], dpi=100) == []
    plt.close("all")

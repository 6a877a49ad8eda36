"""`make demo`: the study in miniature, on real data that ships offline -- a classification study and a detection leg.

Classification (configs/studies/demo.yaml): a dense small ResNet trained on Fashion-MNIST is the upstream model;
GMP, AC/DC and one-shot magnitude pruning make sparse versions at 80/90/95%; each is transferred (full and
linear) to scikit-learn's digits and to generated shapes with 2 seeds.
Detection (configs/studies/demo_detection.yaml): Fashion-MNIST items pasted on small canvases with their boxes
(`DETECTION_DATA`); a dense yolov5n trained on classes 0-4, GMP-pruned to 80% and 90%, then each transferred to
classes 5-9 with the seed-001 recipe (shortened), and the sparsest one exported to ONNX (fp32 and INT8) and timed.
Both studies share one pool of workers. Finished runs are reused, so a second `make demo` takes seconds. Run it
with `python -m utils.studies` (what `make demo` does).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from utils.data.paste_yolo import make_paste_dataset
from utils.deploy import add_latency_, deploy_checkpoint
from utils.io import atomic_write_json, atomic_write_text, read_json
from utils.paths import STUDY_DIR
from utils.tasks import DETECTION

log = logging.getLogger(__name__)

DEMO_STUDY = STUDY_DIR / "demo.yaml"
DETECTION_STUDY = STUDY_DIR / "demo_detection.yaml"
DEMO_STUDIES = (DEMO_STUDY, DETECTION_STUDY)
# The detection study's data (the paths its study file names): make_paste_dataset's arguments.
DETECTION_DATA = (
    {"out": "experiments/demo_detection/data/upstream", "classes": [0, 1, 2, 3, 4], "train": 600, "val": 120,
     "canvas": 64, "scale": (0.55, 1.1), "seed": 0},
    {"out": "experiments/demo_detection/data/transfer", "classes": [5, 6, 7, 8, 9], "train": 300, "val": 120,
     "canvas": 64, "scale": (0.55, 1.1), "seed": 1},
)


def prepare_detection_data() -> list[Path]:
    """Write the detection leg's YOLO datasets (kept when already made with the same settings)."""
    return [make_paste_dataset(**{**spec, "classes": list(spec["classes"])}) for spec in DETECTION_DATA]


def latest_rows(results_csv: Path) -> pd.DataFrame:
    """A study's results.csv, one row per run: the later of a run made again (a cell re-run on changed data)."""
    df = pd.read_csv(results_csv)
    return df.drop_duplicates(subset=["dset", "model", "sparsity", "seed", "finetuning"], keep="last")


def side_by_side(results_csv: Path) -> pd.DataFrame:
    """Rows model@sparsity; columns dataset x mode (mean test accuracy over seeds, %), plus measured sparsity."""
    df = latest_rows(results_csv)
    if "task" in df.columns:          # a detector's score is its mAP@0.5:0.95
        df["val_acc"] = df["val_acc"].where(df["task"] != DETECTION, df["map"])
    acc = df.pivot_table(index=["model", "sparsity"], columns=["dset", "finetuning"], values="val_acc",
                         aggfunc="mean") * 100
    acc.columns = [f"{d} {m}" for d, m in acc.columns]
    acc["measured sparsity"] = df.groupby(["model", "sparsity"])["measured_sparsity"].mean()
    order = sorted(acc.index, key=lambda ms: (ms[0] != "Dense", ms[1], ms[0]))
    return acc.loc[order]


def format_table(table: pd.DataFrame) -> str:
    """The side-by-side table as fixed-width text."""
    cols = list(table.columns)
    lines = [f"{'model':<10} {'sparsity':>8}  " + "  ".join(f"{c:>14}" for c in cols)]
    for (model, sparsity), row in table.iterrows():
        cells = [f"{row[c]:>14.4f}" if c == "measured sparsity" else f"{row[c]:>14.1f}" for c in cols]
        lines.append(f"{model:<10} {sparsity:>8.2f}  " + "  ".join(cells))
    lines.append("(test top-1 % -- for detection datasets COCO mAP@0.5:0.95 % --, mean over seeds; 'measured "
                 "sparsity' is the fine-tuned models' zeros, classifier excluded)")
    return "\n".join(lines)


DEMO_SECTIONS = "<!-- make demo: the sections below are rewritten by each run of the demo -->"


def side_by_side_markdown(table: pd.DataFrame) -> str:
    """The side-by-side table as Markdown: rows method@sparsity, the measured sparsity with four decimals."""
    rows = ["| model | " + " | ".join(table.columns) + " |", "|---|" + "---:|" * len(table.columns)]
    for (model, sparsity), row in table.iterrows():
        cells = ["–" if pd.isna(row[c]) else f"{row[c]:.4f}" if c == "measured sparsity" else f"{row[c]:.1f}"
                 for c in table.columns]
        rows.append(f"| {model}@{sparsity:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def add_demo_sections(report: Path, table: pd.DataFrame, deployment_lines: list[str] | None) -> None:
    """Append to a demo study's report.md (replacing what an earlier demo appended) the side-by-side table with
    the measured sparsity after fine-tuning and, for the detection leg, the exported detector's size, agreement
    and latency: what the demo prints, kept in the report too."""
    text = report.read_text(encoding="utf-8").split(DEMO_SECTIONS)[0].rstrip()
    parts = [text, "", DEMO_SECTIONS, "", "## Full and linear transfer side by side, with the measured sparsity", "",
             side_by_side_markdown(table), "",
             "Test top-1 % (detection: COCO mAP@0.5:0.95 %), mean over seeds; 'measured sparsity': the fine-tuned "
             "models' zeros, classifier excluded.", ""]
    if deployment_lines:
        parts += ["## The sparsest transferred detector, exported", "", *(f"- {line}" for line in deployment_lines),
                  ""]
    atomic_write_text(report, "\n".join(parts))


def what_it_shows(report: Path) -> str:
    """The report's 'What this shows' section as terminal text (the demo prints it after its tables)."""
    text = report.read_text(encoding="utf-8")
    if "## What this shows" not in text:
        return ""
    section = text.split("## What this shows", 1)[1].split("\n## ", 1)[0]
    body = section.replace("**", "").replace("### ", "").strip()
    return "what this shows:\n" + body


def deploy_sparsest(results_csv: Path, *, latency: bool = True, **options: Any) -> dict[str, Any] | None:
    """Export the sparsest transferred model of a study (ONNX fp32 and, after QAT, INT8), checked in every installed
    engine, and (`latency`) time both files in each; reuses an export newer than its model. None when the study
    has no full transfer yet."""
    df = latest_rows(results_csv)
    rows = df[df["finetuning"] == "full"].sort_values(["sparsity", "seed"], ascending=[False, True], kind="stable")
    if rows.empty:
        return None
    model = Path(rows.iloc[0]["run_dir"]) / "model.pt"
    out = model.parent / "model_export"
    report = out / "export_report.json"
    if report.is_file() and report.stat().st_mtime >= model.stat().st_mtime:
        cached = read_json(report)
        if latency and "latency_ms" not in cached:
            atomic_write_json(report, add_latency_(cached))
        return cached
    return deploy_checkpoint(model, out, latency=latency, **options)

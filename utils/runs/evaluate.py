"""--eval_only: score a model that already has its downstream head (a fine-tuned model.pt) on the test split."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from models import classifier_outputs
from policies.tasks import ClassificationTask, Task
from utils.data import DatasetSplits
from utils.errors import UserError
from utils.io import atomic_write_json
from utils.runs.kinds import RunResult
from utils.runs.options import FullOptions
from utils.runs.setup import Upstream, make_loaders
from utils.sparsity import measured_sparsity

log = logging.getLogger(__name__)


def evaluate_only(upstream: Upstream, data: DatasetSplits, *, opts: FullOptions, device: torch.device,
                  run_dir: Path, task: Task | None = None) -> RunResult:
    """--eval_only: score a model that already has its downstream head on the test split."""
    model = upstream.model
    out_features = classifier_outputs(model)
    if out_features != data.num_classes:
        raise UserError(f"{opts.from_checkpoint_path}: classifier has {out_features} outputs but dataset "
                        f"{opts.dataset!r} has {data.num_classes} classes; --eval_only needs a fine-tuned checkpoint")
    if upstream.classes is None:
        log.warning("%s records no class names (not a model.pt of this version): the order of its outputs cannot be "
                    "checked against %s's classes", opts.from_checkpoint_path, opts.dataset)
    elif list(upstream.classes) != list(data.classes):
        moved = [i for i, (a, b) in enumerate(zip(upstream.classes, data.classes)) if a != b]
        raise UserError(f"{opts.from_checkpoint_path}: its head was trained with other classes or another class "
                        f"order ({len(moved)} of {data.num_classes} differ, e.g. output {moved[0]} is "
                        f"{upstream.classes[moved[0]]!r} "
                        f"there, {data.classes[moved[0]]!r} here); evaluate it on the layout it was trained on")
    model.to(device)
    _, test_loader = make_loaders(data, batch_size=opts.batch_size or 64, test_batch_size=opts.batch_size or 64,
                                  workers=opts.workers, device=device)
    metrics = (task or ClassificationTask()).evaluate(model, test_loader, device)
    record = {"dset": opts.dataset_label(),
              "checkpoint": opts.from_checkpoint_path, "val_acc": metrics.get("test_acc", ""),
              "test_loss": metrics["test_loss"], "measured_sparsity": measured_sparsity(model),
              **{k: metrics[k] for k in ("map", "map50", "map75") if k in metrics}}
    atomic_write_json(run_dir / "eval_result.json", record)
    return RunResult(record=record, run_dir=run_dir)

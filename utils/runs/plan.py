"""The first stage of a full fine-tuning run: the options resolved into a plan (configs read, device and
processes chosen, the run directory decided)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from policies.trainer import TrainerConfig, accumulation
from utils.config import load_config
from utils.distributed import DistInfo, barrier, init_distributed
from utils.runs.dirs import check_results_table, prepare_run_dir, run_dir_for
from utils.runs.options import FullOptions, TransferConfig
from utils.runs.setup import per_rank_batch_size, pick_device
from utils.tasks import task


@dataclass(frozen=True)
class Plan:
    """The options resolved: configs read, device and processes chosen, the run directory decided."""

    trainer: TrainerConfig
    transfer: TransferConfig
    epochs: int
    batch_size: int                # per process
    accumulate: int                # batches per optimizer step
    weight_decay: float            # the optimizer's (YOLOv5's nominal batch scales it)
    lr: float
    device: torch.device
    gpus: list[int]
    dist: DistInfo
    experiment_root: Path
    run_dir: Path
    status: str                    # "new" | "resume" | "finished"


# File names that say nothing of the checkpoint (a run directory's model.pt): such a file is named by its folder.
GENERIC_CHECKPOINT_STEMS = ("model", "checkpoint", "last", "best", "model_best", "weights", "pytorch_model", "final")


def checkpoint_label(path: str) -> str:
    """A checkpoint's name in run names: its file's stem, or its folder's name for a generic file name
    (experiments/demo/upstream/gmp_90_47ad/model.pt -> gmp_90_47ad). The launchers (utils/launch/common.sh)
    apply the same rule to refuse two checkpoints that would share runs."""
    p = Path(path)
    if p.stem in GENERIC_CHECKPOINT_STEMS and p.absolute().parent.name:
        return p.absolute().parent.name
    return p.stem


def default_exp_name(dataset_label: str, source: str | None, seed: int, variant: str = "") -> str:
    """DATASET_CHECKPOINT[_VARIANT]_seedSEED (checkpoint_label; the architecture's name when training from scratch;
    a linear probe's variant, e.g. linear-lbfgs); the dataset as RunOptions.dataset_label names it."""
    label = checkpoint_label(source) if source else "model"
    return f"{dataset_label}_{label}{'_' + variant if variant else ''}_seed{seed}"


def plan_run(opts: FullOptions) -> Plan:
    trainer = load_config(opts.trainer_config_path, TrainerConfig)
    transfer = load_config(opts.transfer_config_path, TransferConfig) if opts.transfer_config_path else TransferConfig()
    batch_size = opts.batch_size or trainer.batch_size
    accumulate, weight_decay = accumulation(trainer, batch_size, opts.accumulate_steps)
    device, gpus = pick_device(cpu=opts.cpu, gpus=opts.gpus)
    dist_info = init_distributed(use_cuda=device.type == "cuda")
    if dist_info.enabled:
        batch_size = per_rank_batch_size(batch_size, dist_info)
        if device.type == "cuda":
            device, gpus = torch.device(f"cuda:{dist_info.local_rank}"), [dist_info.local_rank]
    experiment_root, run_dir = Path(opts.experiment_root_path), run_dir_of(opts)
    if dist_info.is_main:
        check_results_table(experiment_root, extra_columns=task(dataset=opts.dataset).extra_columns)
    status = "new" if opts.eval_only else prepare_run_dir(run_dir, resume=opts.resume)
    barrier(dist_info)  # every rank has decided new/resume/finished before the main one writes
    return Plan(trainer=trainer, transfer=transfer, epochs=opts.epochs or trainer.epochs, batch_size=batch_size,
                accumulate=accumulate, weight_decay=weight_decay, lr=opts.lr or trainer.optimizer.lr, device=device,
                gpus=gpus, dist=dist_info, experiment_root=experiment_root, run_dir=run_dir, status=status)


def run_dir_of(opts: FullOptions) -> Path:
    name = opts.exp_name or default_exp_name(opts.dataset_label(), opts.from_checkpoint_path or opts.arch, opts.seed)
    return run_dir_for(opts.experiment_root_path, name)

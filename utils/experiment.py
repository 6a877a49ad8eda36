"""The pieces a run is built from: options, transfer config, device, model, loaders."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from models import build_model
from utils.checkpoints import load_checkpoint
from utils.config import StrictModel
from utils.distributed import DistInfo
from utils.errors import UserError

log = logging.getLogger(__name__)


class TransferConfig(StrictModel):
    """A `configs/transfer/*.yaml` file: which upstream modules to load and which to freeze."""

    load_modules: list[str] | None = None      # module-name prefixes; None = all but the classifier
    freeze_modules: list[str] = Field(default_factory=list)
    freeze_backbone: bool = False             # freeze everything but the classifier


class RunOptions(StrictModel):
    """Everything main.py's flags say about one run (the study's flags plus ours)."""

    dset: str
    dset_path: str | None = None
    config_path: str
    transfer_config_path: str | None = None
    from_checkpoint_path: str | None = None
    checkpoint_flavour: str | None = None
    arch: str | None = None
    epochs: int | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    lr: float | None = Field(default=None, gt=0)
    workers: int = Field(default=4, ge=0)
    manual_seed: int = 0
    experiment_root_path: str = "experiments"
    exp_name: str | None = None
    interpolation: Literal["bilinear", "bicubic"] | None = None
    image_size: int | None = Field(default=None, gt=0)
    max_train_samples: int | None = Field(default=None, gt=0)
    model_label: str | None = None
    sparsity_label: float | None = Field(default=None, ge=0, le=1)
    use_wandb: bool = False
    wandb_project: str = "sparse-transfer"
    wandb_group: str | None = None
    wandb_name: str | None = None
    gpus: list[int] | None = None
    cpu: bool = False
    eval_only: bool = False
    fp16: bool = False
    resume: bool = False
    progress: bool = True
    recipe: str | None = None                 # SparseML-style recipe: drives epochs, LR, WD, pruning, QAT
    recipe_args: str | None = None            # JSON or k=v,k2=v2 overrides of the recipe's variables


def pick_device(opts: RunOptions) -> tuple[torch.device, list[int]]:
    """CUDA when present and not --cpu (the --gpus list, default GPU 0), else CPU."""
    if opts.cpu or not torch.cuda.is_available():
        if opts.gpus and not opts.cpu:
            log.warning("--gpus %s given but CUDA is not available: running on CPU", opts.gpus)
        return torch.device("cpu"), []
    gpus = opts.gpus or [0]
    bad = [g for g in gpus if g >= torch.cuda.device_count()]
    if bad:
        raise UserError(f"--gpus {gpus}: GPU(s) {bad} do not exist; this machine has "
                        f"{torch.cuda.device_count()} (use 0..{torch.cuda.device_count() - 1})")
    return torch.device(f"cuda:{gpus[0]}"), gpus


def default_exp_name(opts: RunOptions) -> str:
    source = Path(opts.from_checkpoint_path).stem if opts.from_checkpoint_path else opts.arch
    return f"{opts.dset}_{source}_seed{opts.manual_seed}"


def load_upstream(opts: RunOptions) -> tuple[nn.Module, dict]:
    """The upstream model (a checkpoint, or a fresh architecture) and what the run must know of it."""
    if opts.from_checkpoint_path:
        loaded = load_checkpoint(opts.from_checkpoint_path, flavour=opts.checkpoint_flavour,
                                 keep_classifier=opts.eval_only)
        model = loaded.model
        method = loaded.header.get("extra", {}).get("method")  # native files may name their method
        info = {"arch": loaded.arch, "flavour": loaded.flavour.name, "method": method or loaded.flavour.method,
                "interpolation": loaded.interpolation, "normalization": loaded.normalization,
                "arch_kwargs": dict(loaded.arch_kwargs)}
    elif opts.arch:
        model = build_model(opts.arch, num_classes=1)
        info = {"arch": opts.arch, "flavour": None, "method": "Dense", "interpolation": "bilinear",
                "normalization": "dataset", "arch_kwargs": {}}
    else:
        raise UserError("give --from_checkpoint_path (fine-tune a checkpoint) or --arch (train from scratch)")
    return model, info


def reinitialize_unloaded_(model: nn.Module, fresh: nn.Module, load_prefixes: list[str], classifier: str) -> list[str]:
    """Copy the fresh initialisation into every tensor not under `load_prefixes`; returns their names."""
    fresh_state = fresh.state_dict()
    state = model.state_dict()
    reset = [k for k in state if not k.startswith(classifier + ".") and not k.startswith(tuple(load_prefixes))]
    model.load_state_dict({**state, **{k: fresh_state[k] for k in reset}})
    return reset


def freeze_(model: nn.Module, transfer: TransferConfig) -> list[nn.Module]:
    """Stop gradients under the transfer config's prefixes; returns the frozen modules (kept in eval mode)."""
    head = model.classifier_name
    if transfer.freeze_backbone:
        frozen = [m for n, m in model.named_children() if n != head]
    else:
        frozen = [m for n, m in model.named_modules() if n and n.startswith(tuple(transfer.freeze_modules))]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return frozen


def make_loaders(data, *, batch_size: int, test_batch_size: int, workers: int, device: torch.device,
                 dist: "DistInfo | None" = None):
    """Train loader shuffled by a generator the Manager reseeds per epoch (a DistributedSampler under DDP)."""
    generator = torch.Generator()
    pin = device.type == "cuda"
    sampler = None
    if dist is not None and dist.enabled:
        sampler = DistributedSampler(data.train, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=0)
    train = DataLoader(data.train, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                       generator=generator, num_workers=workers, pin_memory=pin, drop_last=False)
    test = DataLoader(data.test, batch_size=test_batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    if len(train) == 0:
        raise UserError(f"dataset {data.spec.name!r}: the train split is empty")
    return train, test

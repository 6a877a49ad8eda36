"""The pieces a training run is built from: device, upstream model, transfer set-up, data loaders."""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from models import build_model
from utils.checkpoints import file_sha256, load_checkpoint
from utils.data.seeded import SampleSeeded
from utils.distributed import DistInfo
from utils.errors import UserError
from utils.runs.options import TransferConfig

log = logging.getLogger(__name__)


def pick_device(*, cpu: bool, gpus: list[int] | None) -> tuple[torch.device, list[int]]:
    """CUDA when present and not `cpu` (the `gpus` list, default GPU 0), else CPU."""
    if cpu or not torch.cuda.is_available():
        if gpus and not cpu:
            log.warning("--gpus %s given but CUDA is not available: running on CPU", gpus)
        return torch.device("cpu"), []
    gpus = gpus or [0]
    bad = [g for g in gpus if g >= torch.cuda.device_count()]
    if bad:
        raise UserError(f"--gpus {gpus}: GPU(s) {bad} do not exist; this machine has "
                        f"{torch.cuda.device_count()} (use 0..{torch.cuda.device_count() - 1})")
    return torch.device(f"cuda:{gpus[0]}"), gpus


def per_rank_batch_size(batch_size: int, dist_info: DistInfo) -> int:
    """The configured batch is the global one: each of N processes takes batch_size / N."""
    if batch_size % dist_info.world_size:
        raise UserError(f"batch size {batch_size} is not divisible by the {dist_info.world_size} processes; "
                        "pick a multiple of --nproc_per_node")
    return batch_size // dist_info.world_size


@dataclass
class Upstream:
    """The model a run starts from and what the run must know of it."""

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    flavour: str | None = None                # None: trained from scratch
    method: str | None = "Dense"             # the results' 'model' label the file implies
    interpolation: str = "bilinear"
    normalization: Any = "dataset"
    classes: list[str] | None = None         # the class names its head was trained on (native files)
    recipe: str | None = None                # the recipe text the file carries (SparseML files): --recipe checkpoint
    input_size: int | None = None            # the checkpoint's image size (recorded by a run, else its flavour's)
    path: str | None = None                  # the checkpoint file (None: built from scratch)

    def image_size(self, given: int | None) -> int:
        """The size a run feeds this model: `given`, else the size the checkpoint records, else the architecture's
        default; logged with where it came from (one rule for every command)."""
        size, source = chosen_image_size(given, recorded=self.input_size, default=self.model.default_input_size)
        log.info("image size %d px (%s)", size, source)
        return size

    def describe(self) -> dict[str, Any]:
        """The upstream as config.yaml records it."""
        return {k: v for k, v in asdict(self).items() if k not in ("model", "classes", "recipe", "path")}

    @functools.cached_property
    def source(self) -> dict[str, Any]:
        """The checkpoint as a features cache keys it: path, content hash, flavour, architecture (hashed once)."""
        if self.path is None:
            raise UserError("a model built from scratch has no checkpoint to key features by")
        return {"path": str(Path(self.path).resolve()), "sha256": file_sha256(self.path), "flavour": self.flavour,
                "arch": self.arch, "arch_kwargs": dict(self.arch_kwargs or {})}

    def freeze(self) -> "Upstream":
        """The model in eval mode with gradients off (a linear probe's backbone); returns self."""
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self


def chosen_image_size(given: int | None, *, recorded: int | None, default: int) -> tuple[int, str]:
    """(size, where it came from): the user's, else the checkpoint's, else the architecture's."""
    if given:
        return given, "given"
    if recorded:
        return int(recorded), "the checkpoint's: the size it trained at, or its flavour's; --image_size sets another"
    return default, "the architecture's default"


def load_upstream(*, checkpoint_path: str | None, flavour: str | None, arch: str | None,
                  keep_classifier: bool = False) -> Upstream:
    """The upstream model: a checkpoint (any flavour), or a fresh architecture to train from scratch."""
    if checkpoint_path:
        loaded = load_checkpoint(checkpoint_path, flavour=flavour, keep_classifier=keep_classifier, arch=arch)
        return Upstream(model=loaded.model, arch=loaded.arch, arch_kwargs=dict(loaded.arch_kwargs),
                        flavour=loaded.flavour.name,
                        method=loaded.method,
                        interpolation=loaded.interpolation, normalization=loaded.normalization,
                        classes=loaded.extra.get("classes"), recipe=loaded.recipe,
                        input_size=loaded.input_size, path=str(checkpoint_path))
    if arch:
        model = build_model(arch, num_classes=1)
        given = getattr(model, "input_config", None) or {}      # timm / torchvision: their pretrained config's
        return Upstream(model=model, arch=arch, **{k: v for k, v in given.items()
                                                   if k in ("interpolation", "normalization")})
    raise UserError("give --from_checkpoint_path (fine-tune a checkpoint) or --arch (train from scratch)")


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


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a Slurm allocation), not the machine's count;
    inside a Slurm job also at most its `--cpus-per-task` (clusters without core binding leave the mask whole,
    and N jobs that each take every core run many times slower than N jobs on one core each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    given = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cores, int(given)) if given.isdigit() and int(given) > 0 else cores


_CAPPED_SAID: set[tuple[int, int]] = set()


def loader_workers(requested: int) -> int:
    """Data-loader worker processes: at most one per core this process may use (more only compete for them; the
    results do not depend on the count, see utils.data.seeded). Said once per process, not for every loader."""
    usable = usable_cores()
    if requested > usable and (requested, usable) not in _CAPPED_SAID:
        _CAPPED_SAID.add((requested, usable))
        log.info("%d data-loader workers asked for, %d cores here: using %d", requested, usable, usable)
    return min(requested, usable)


def make_loaders(data, *, batch_size: int, test_batch_size: int, workers: int, device: torch.device,
                 dist: DistInfo | None = None) -> tuple[DataLoader, DataLoader]:
    """Train loader shuffled by a generator the Manager reseeds per epoch (a DistributedSampler under DDP)."""
    generator = torch.Generator()
    workers = loader_workers(workers)
    pin = device.type == "cuda"
    sampler = None
    seeded = SampleSeeded(data.train)
    if dist is not None and dist.enabled:
        sampler = DistributedSampler(seeded, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=0)
    collate = getattr(data.train, "collate_fn", None)      # detection: a varying number of boxes per image
    train = DataLoader(seeded, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                       generator=generator, num_workers=workers, pin_memory=pin, drop_last=False, collate_fn=collate)
    test = DataLoader(data.test, batch_size=test_batch_size, shuffle=False, num_workers=workers, pin_memory=pin,
                      collate_fn=collate)
    if len(train) == 0:
        raise UserError(f"dataset {data.spec.name!r}: the train split is empty")
    return train, test

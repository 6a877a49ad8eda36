"""DistributedDataParallel set-up for `torchrun --nproc_per_node N main.py ...` (NCCL on GPUs, gloo on CPU)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files (run dir, checkpoints, results)."""
        return self.rank == 0


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain single process (before or without init_distributed)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(*, use_cuda: bool) -> DistInfo:
    """Join the process group torchrun describes in the environment; a single process needs nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=world_size,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group", info.rank, info.world_size, backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

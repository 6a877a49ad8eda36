"""Shared test set-up: tiny sparse checkpoints in the native format, trainer configs, one torch thread."""
import os
from pathlib import Path

import matplotlib
import pytest
import torch

from models import build_model
from utils.checkpoints import save_native_checkpoint
from utils.sparsity import magnitude_prune_

matplotlib.use("Agg")


def write_sparse_checkpoint(path: Path, *, sparsity: float = 0.8, seed: int = 0, num_classes: int = 7,
                            method: str | None = None, **arch_kwargs) -> dict[str, torch.Tensor] | None:
    """A seeded `resnet_small`, magnitude-pruned to `sparsity` (0: dense), saved natively at `path` (labelled with
    its pruning `method` when given, as a pruning run labels its model.pt); its masks."""
    torch.manual_seed(seed)
    model = build_model("resnet_small", num_classes=num_classes, **arch_kwargs)
    masks = magnitude_prune_(model, sparsity) if sparsity else None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_native_checkpoint(path, model, arch="resnet_small", arch_kwargs=arch_kwargs, masks=masks,
                           extra={"method": method} if method else None)
    return masks


# The longest tests: commands run as subprocesses, a notebook kernel, and the Slurm tests (mostly waiting on jobs
# of a real one-node cluster). pytest-xdist's worksteal hands each of the N workers (make test: one per core) a
# contiguous share of the list and lets a worker that is done take tests from the end of another's: the Slurm
# tests open the first share, the other long tests the second, so neither worker is left with all of them.
SLURM_FIRST = ("tests/slurm/",)
SLOW_FIRST = ("tests/sparseml/test_notebook.py", "tests/sparseml/test_cli.py", "tests/runs/test_launchers.py",
              "tests/runs/test_distributed.py", "tests/studies/test_parallel.py", "tests/studies/test_sweep.py",
              "tests/detection/test_yolov5_cli.py", "tests/analysis/test_notebook.py")


def pytest_collection_modifyitems(config, items):
    slurm = [i for i in items if i.nodeid.startswith(SLURM_FIRST)]
    slow = [i for i in items if i.nodeid.startswith(SLOW_FIRST)]
    rest = [i for i in items if not i.nodeid.startswith(SLURM_FIRST + SLOW_FIRST)]
    workers = getattr(config.option, "numprocesses", None) or 1
    share = len(items) // workers if isinstance(workers, int) else len(items) // 2
    before = rest[:max(0, share - len(slurm))]
    items[:] = slurm + before + slow + rest[len(before):]


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches that live under the user's home (image verification) go to a temporary folder in tests."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def sparse_checkpoint(tmp_path):
    """(path, masks) of a tiny 80%-sparse checkpoint; call `make_sparse_checkpoint` for other settings."""
    path = tmp_path / "up.pt"
    return path, write_sparse_checkpoint(path)


@pytest.fixture
def make_sparse_checkpoint():
    """write_sparse_checkpoint(path, sparsity=..., seed=..., num_classes=..., **arch_kwargs) -> masks."""
    return write_sparse_checkpoint


@pytest.fixture
def trainer_config(tmp_path):
    """(yaml text, name='trainer.yaml') -> the path of a trainer config written under tmp_path."""

    def write(text: str, name: str = "trainer.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy machine's thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Small models for the engine tests, with activations that depend on the input; the sparse engine, forced."""
import torch

from utils.onnx import SparseEngine
from utils.onnx.engines import load_engine


def real_statistics_(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """BatchNorm statistics of real activations (a fresh deep net's outputs barely vary with the input otherwise):
    reset, biases spread, one pass of random images in training mode; returns the model in eval mode."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
                module.bias.uniform_(-0.1, 0.3)
        model.train()
        model(torch.rand(8, 3, size, size))
    return model.eval()


def sparse_engine_forced(path, force: str | None):
    """The sparse engine on `path` with every layer forced sparse or dense (None: calibrated), threads 2."""
    SparseEngine.force = force
    try:
        return load_engine("sparse", path, threads=2)
    finally:
        SparseEngine.force = None

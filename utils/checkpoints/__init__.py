"""Checkpoint files: flavours (configs/checkpoints/*.yaml), strict loading, the native format, one-shot pruning.

    loaded = load_checkpoint("acdc_resnet50_90.pth")        # flavour auto-detected
    loaded.model, loaded.masks, loaded.report.global_sparsity

Inspect a file from the shell: `python -m utils.checkpoints PATH`.
"""
from utils.checkpoints.detect import detect_flavour, flavour_matches
from utils.checkpoints.files import file_sha256, read_checkpoint_file
from utils.checkpoints.flavours import FLAVOURS, Flavour, Normalization, load_flavour
from utils.checkpoints.load import LoadedCheckpoint, check_dense_label, load_checkpoint
from utils.checkpoints.native import NATIVE_FORMAT, save_native_checkpoint
from utils.checkpoints.prune import prune_checkpoint
from utils.checkpoints.report import LayerSparsity, SparsityReport

__all__ = ["FLAVOURS", "NATIVE_FORMAT", "Flavour", "LayerSparsity", "LoadedCheckpoint", "Normalization",
           "SparsityReport", "check_dense_label", "detect_flavour", "file_sha256", "flavour_matches",
           "load_checkpoint", "load_flavour", "prune_checkpoint", "read_checkpoint_file", "save_native_checkpoint"]

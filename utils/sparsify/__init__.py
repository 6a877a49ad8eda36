"""The Sparsify sparse-transfer experience, open: use case + data + optim level -> a deployable sparse model.

    run_sparse_transfer(SparseTransferOptions(use_case="ic", data="/data/flowers", optim_level=0.5))

Pieces, each usable alone: the use-case registry (`resolve_use_case`), the local model zoo (`load_zoo`,
configs/zoo.yaml), optim-level selection (`optim_target`, `select_model`, pure functions), and the run
(`run_sparse_transfer`): fine-tune with a recipe (the `full` run kind), export ONNX (utils.deploy), time the
result against a dense model in ONNX Runtime, write summary.json + summary.md in the run directory.
"""
from utils.sparsify.optim import OptimTarget, Selection, optim_target, rank_by_size, select_model
from utils.sparsify.run import (
                                DEFAULT_TRAINER,
                                RECIPE_FP32,
                                RECIPE_INT8,
                                SparseTransferOptions,
                                choose_recipe,
                                entry_from_checkpoint,
                                run_sparse_transfer,
                                summary_markdown,
)
from utils.sparsify.use_cases import USE_CASES, UseCase, resolve_use_case
from utils.sparsify.zoo import DEFAULT_ZOO, Zoo, ZooEntry, backbone_params, load_zoo

__all__ = ["DEFAULT_TRAINER", "DEFAULT_ZOO", "OptimTarget", "RECIPE_FP32", "RECIPE_INT8", "Selection",
           "SparseTransferOptions", "USE_CASES", "UseCase", "Zoo", "ZooEntry", "backbone_params", "choose_recipe",
           "entry_from_checkpoint", "load_zoo", "optim_target", "rank_by_size", "resolve_use_case",
           "run_sparse_transfer", "select_model", "summary_markdown"]

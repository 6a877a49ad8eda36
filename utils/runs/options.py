"""What a run is told: one validated options model per run kind, sharing one spelling for shared concepts.

Inside the code a dataset is `dataset`/`dataset_path`, a seed is `seed` and a trainer config is
`trainer_config_path`; the entry points keep the study's flag names (main.py's `--dset`, `--dset_path`,
`--manual_seed`, `--config_path`; the linear script's `--training_config_path`) and map them here.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from utils.config import MIN_IMAGE_SIZE, StrictModel
from utils.paths import PROBE_DIR, TRAINER_DIR
from utils.tasks import task


class TransferConfig(StrictModel):
    """A `configs/transfer/*.yaml` file: which upstream modules to load and which to freeze."""

    load_modules: list[str] | None = None      # module-name prefixes; None = all but the classifier
    freeze_modules: list[str] = Field(default_factory=list)
    freeze_backbone: bool = False             # freeze everything but the classifier


class RunOptions(StrictModel):
    """Options every run kind takes: what to transfer where, with which seed, and where the run lives."""

    dataset: str
    dataset_path: str | None = None
    dataset_name: str | None = None            # the name in run names and results.csv's 'dset' (see dataset_label)
    from_checkpoint_path: str | None = None
    checkpoint_flavour: str | None = None
    trainer_config_path: str | None = None
    epochs: int | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    seed: int = 0
    workers: int = Field(default=4, ge=0)
    interpolation: Literal["bilinear", "bicubic"] | None = None
    image_size: int | None = Field(default=None, ge=MIN_IMAGE_SIZE)   # smaller leaves no image to resize
    max_train_samples: int | None = Field(default=None, gt=0)
    experiment_root_path: str = "experiments"
    exp_name: str | None = None
    model_label: str | None = None             # results.csv's 'model' (method) column
    sparsity_label: float | None = Field(default=None, ge=0, le=1)   # results.csv's 'sparsity' column
    gpus: list[int] | None = None
    cpu: bool = False
    resume: bool = False
    progress: bool = True


    @field_validator("dataset_name")
    @classmethod
    def _a_name_for_folders_and_rows(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
            raise ValueError(f"the dataset's name (--dset_name / --dataset_name) names run folders and result rows: "
                             f"letters, digits and . _ + - only, starting with a letter or digit; got {name!r}")
        return name

    def dataset_label(self) -> str:
        """The dataset's name in run names and results: `dataset_name` when given; a user's ImageFolder tree by its
        folder's name and YOLO data by its data.yaml (as yolo_dataset_name), so that two of a user's datasets never
        share a run or a result row; else the registry name (cifar10, ...)."""
        if self.dataset_name:
            return self.dataset_name
        return task(dataset=self.dataset).dataset_label(self.dataset, self.dataset_path)


class FullOptions(RunOptions):
    """Full fine-tuning (main.py): every unfrozen weight trains, the upstream's zeros stay zero."""

    trainer_config_path: str                   # the optimizer, batch size, epochs, LR schedule
    transfer_config_path: str | None = None
    arch: str | None = None                    # train it from scratch (no checkpoint), or a bare state dict's
    lr: float | None = Field(default=None, gt=0)
    accumulate_steps: int | None = Field(default=None, gt=0)   # batches per optimizer step (default: the config's)
    use_wandb: bool = False
    wandb_project: str = "sparse-transfer"
    wandb_group: str | None = None
    wandb_name: str | None = None
    eval_only: bool = False
    fp16: bool = False                         # the study's spelling of precision fp16
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"   # autocast dtype; weights stay fp32 (masks exact);
                                                # auto: bf16 where a quick probe finds it faster, else fp32
    channels_last: bool = False                # NHWC memory order for model and inputs
    compile: bool = False                      # torch.compile the forward pass (the first steps compile: slow)
    noautoanchor: bool = False                 # detection: keep the anchors as loaded (no AutoAnchor check)
    recipe: str | None = None                 # SparseML-style recipe: drives epochs, LR, WD, pruning, QAT
    recipe_args: str | None = None            # JSON or k=v,k2=v2 overrides of the recipe's variables
    distill_teacher: str | None = None        # the teacher checkpoint of a recipe's DistillationModifier

    @model_validator(mode="before")
    @classmethod
    def _fp16_is_a_precision(cls, data: Any) -> Any:
        """--fp16 (the study's flag) means --precision fp16; given with another precision it is a contradiction."""
        if isinstance(data, dict) and data.get("fp16"):
            if data.get("precision", "fp32") not in ("fp32", "fp16"):
                raise ValueError(f"--fp16 contradicts --precision {data['precision']}; give one of them")
            data = {**data, "precision": "fp16", "fp16": False}
        return data


class LinearOptions(RunOptions):
    """Linear fine-tuning (finetune_pre_extracted_features.py): a probe on the frozen backbone's features."""

    from_checkpoint_path: str
    arch: str | None = None                    # the architecture of a bare state dict (timm:NAME, tv:NAME, ...)
    trainer_config_path: str = str(TRAINER_DIR / "study_linear_sgd.yaml")   # the sgd solver's protocol
    probe_config_path: str = str(PROBE_DIR / "lbfgs.yaml")                  # the lbfgs/sklearn settings
    solver: str = "lbfgs"
    features_cache: str = "features_cache"
    feature_backend: str = "torch"
    augment: bool = False
    extract_batch_size: int = Field(default=64, gt=0)
    normalization: Literal["imagenet", "checkpoint"] = "imagenet"
    experiment_root_path: str = "experiments/linear"

"""Knowledge distillation from a teacher model, as SparseML's DistillationModifier computes it.

On every step from start_epoch to end_epoch (both included) the loss becomes
`(1 - hardness) * loss + hardness * KL(teacher || student)`, the KL divergence taken between the softmaxes of
teacher and student logits at `temperature`, summed, times temperature**2, divided by the batch size.
The teacher is a model with the same outputs (for transfer: one fine-tuned on the downstream data), given by
the run (main.py's `--distill_teacher CHECKPOINT`, or the recipe's `teacher: CHECKPOINT`), or `self`: a copy
of the student taken at the first distillation step (SparseML's self-distillation).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from policies.base import TrainState
from policies.modifiers.base import MODIFIERS, Modifier, ModifierArgs
from utils.errors import UserError


def kl_logsoftmax(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """SparseML's distillation term: KL(teacher || student) at `temperature`, * temperature**2, per sample."""
    if student.shape != teacher.shape:
        raise UserError(f"distillation: teacher outputs {tuple(teacher.shape)} differ from the student's "
                        f"{tuple(student.shape)}; the teacher must predict the same classes")
    items = student.numel() / teacher.size(-1)
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    log_target=True, reduction="sum") * temperature ** 2 / items


@MODIFIERS.register("DistillationModifier")
class DistillationModifier(Modifier):
    """See the module docstring. `teacher` is this project's field (SparseML passes the teacher in code)."""

    class Args(ModifierArgs):
        hardness: float = Field(default=0.5, ge=0, le=1)
        temperature: float = Field(default=2.0, gt=0)
        update_frequency: float = -1.0
        distill_output_keys: list[Any] | None = None
        teacher_input_keys: list[Any] | None = None
        teacher: str | None = None         # a checkpoint path, or "self"

    def setup(self, model: nn.Module) -> None:
        if self.args.update_frequency != -1:
            raise UserError(f"{self.source}: update_frequency must be -1 (distillation acts on every step)")
        self.teacher: nn.Module | None = None
        self.self_teacher = self.args.teacher == "self"
        self.saved_teacher: dict[str, torch.Tensor] | None = None

    @property
    def teacher_path(self) -> str | None:
        """The checkpoint the run must load as the teacher (None: given otherwise, or `self`)."""
        return None if self.self_teacher else self.args.teacher

    def on_init(self, state: TrainState) -> None:
        """The teacher: a model the user's loop gave, else the checkpoint the run names (its flag over the recipe's
        `teacher:`), loaded by the run's loader; it must predict the run's classes."""
        given = state.context.teacher
        if isinstance(given, nn.Module):
            self.teacher, self.self_teacher = given, False
            return
        path = given or self.teacher_path
        if path is None or state.context.load_model is None:
            return          # "self", or on_fit_start reports the missing teacher
        teacher = state.context.load_model(path)
        classes, wanted = teacher.get_classifier().out_features, state.context.num_classes
        if wanted is not None and classes != wanted:
            raise UserError(f"{path}: the distillation teacher predicts {classes} classes, the student {wanted}; "
                            "use a teacher fine-tuned on this dataset")
        self.teacher, self.self_teacher = teacher, False

    def active(self, step: int) -> bool:
        return step >= self.start_step and (self.end_step is None or step <= self.end_step)

    def on_fit_start(self, state: TrainState) -> None:
        if self.self_teacher and self.saved_teacher is not None:     # resumed: the copy taken before the stop
            self.teacher = copy.deepcopy(state.model)
            self.teacher.load_state_dict(self.saved_teacher)
        if self.teacher is None and not self.self_teacher:
            raise UserError(f"{self.source}: no teacher: pass --distill_teacher CHECKPOINT (a model with this "
                            "dataset's classes, e.g. a dense one fine-tuned on it) or set `teacher:` in the recipe")
        if self.teacher is not None:
            self.teacher.to(state.device).eval()

    def on_after_forward(self, state: TrainState) -> None:
        if not self.active(state.step):
            return
        if self.teacher is None:           # self-distillation: the student as it is at the first step
            self.teacher = copy.deepcopy(state.model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        batch = state.batch
        with torch.no_grad():
            teacher_logits = self.teacher(batch.inputs)
        distill = kl_logsoftmax(batch.logits, teacher_logits, self.args.temperature)
        batch.loss = (1.0 - self.args.hardness) * batch.loss + self.args.hardness * distill

    def state_dict(self) -> dict[str, Any]:
        if self.self_teacher and self.teacher is not None:
            return {"teacher": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}}
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved_teacher = (state or {}).get("teacher")

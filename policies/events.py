"""The events the Manager emits; policies react to them, loggers observe them."""
from __future__ import annotations

from enum import Enum


class Event(Enum):
    """The training loop, as pseudocode (policies hook in at each named point):

    INIT                                    # policies assembled: each wires itself from state.context (the
                                            # other policies, a model loader, the run's flags)
    FIT_START                               # masks applied, optimizer/schedule state restored
    for epoch in range(start_epoch, num_epochs):
        EPOCH_START                         # RNG for shuffling/augmentation seeded from (seed, epoch)
        for inputs, targets in train_loader:
            BATCH_START                     # schedules set lr / weight decay for state.step
            state.batch = (inputs, targets, logits = model(inputs), loss = criterion(logits, targets))
            AFTER_FORWARD                   # distillation adds its term to state.batch.loss
            (state.batch.loss / batches_in_this_step).backward()
            if this batch ends an optimizer step (every `accumulate_steps` batches, and the epoch's last):
                AFTER_BACKWARD              # masks zero pruned gradients
                optimizer.step(); state.step += 1
                AFTER_OPTIMIZER_STEP        # masks re-zero pruned weights
        evaluate on the test split (every `eval_every_epochs`, and always after the last epoch; the weights'
                                            # moving average, state.eval_model, when the trainer keeps one)
        EPOCH_END                           # metrics written, checkpoint saved atomically
    FIT_END                                 # sparsity verified, final model and result written
    """

    INIT = "init"
    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    BATCH_START = "batch_start"
    AFTER_FORWARD = "after_forward"
    AFTER_BACKWARD = "after_backward"
    AFTER_OPTIMIZER_STEP = "after_optimizer_step"
    EPOCH_END = "epoch_end"
    FIT_END = "fit_end"

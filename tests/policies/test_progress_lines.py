"""The one line per epoch a run logs off a terminal (a Slurm log, `make demo > log`) shows the epoch's score:
a classifier's test accuracy, a detector's mAP (issue 27, item 12: detection lines had none)."""
import torch

from policies.base import TrainState
from policies.loggers import ProgressBar


def epoch_line(caplog, metrics: dict) -> str:
    model = torch.nn.Linear(2, 2)
    state = TrainState(model=model, forward_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       device=torch.device("cpu"), steps_per_epoch=1, num_epochs=1, seed=0)
    bar = ProgressBar(enabled=True)
    bar.bars = False                           # as off a terminal
    with caplog.at_level("INFO", logger="policies.loggers"):
        bar.on_fit_start(state)
        bar.on_epoch_start(state)
        state.metrics = metrics
        bar.on_epoch_end(state)
        bar.on_fit_end(state)
    (line,) = [r.getMessage() for r in caplog.records if "epoch 1/1" in r.getMessage()]
    return line


def test_a_detectors_epoch_line_shows_its_map(caplog):
    line = epoch_line(caplog, {"train_loss": 3.2, "test_loss": 2.9, "map": 0.125, "map50": 0.31, "lr": 0.01})
    assert "map=0.125" in line and "map50=0.31" in line and "train_loss=3.2" in line


def test_a_classifiers_epoch_line_shows_its_accuracy(caplog):
    line = epoch_line(caplog, {"train_loss": 0.5, "train_acc": 0.8, "test_acc": 0.75, "lr": 0.01})
    assert "test_acc=0.75" in line and "map" not in line

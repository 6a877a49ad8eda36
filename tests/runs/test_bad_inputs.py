"""Issue 12 items 9-11: bad inputs found before any work, each reported in one line, never with a traceback.

Each case goes through a command line a user types (main.py, sweep.py, analyze.py) and checks the exit
code, that stderr is one line naming the culprit, and that nothing was written that looks like a result.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import analyze
import main
import sweep
from utils.errors import one_line

TRAINER = "epochs: 1\nbatch_size: 8\noptimizer: {name: sgd, lr: 0.05}\nschedule: {name: constant}\n"
LATIN1 = "# réglage pour l'expérience\n".encode("latin-1")


def fails_with_one_line(capsys, call, *fragments: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def train(tmp_path: Path, *argv: str, trainer: Path | None = None):
    if trainer is None:
        trainer = tmp_path / "trainer.yaml"
        trainer.write_text(TRAINER)
    return main.main(["--config_path", str(trainer), "--experiment_root_path", str(tmp_path / "exp"),
                      "--workers", "0", "--no_progress", "--image_size", "16", "--manual_seed", "1", *argv])


# -- item 9: tracebacks ------------------------------------------------------------------------------------

def test_a_trainer_config_that_is_not_utf8(tmp_path, capsys):
    trainer = tmp_path / "latin1.yaml"
    trainer.write_bytes(LATIN1 + TRAINER.encode())
    fails_with_one_line(capsys, lambda: train(tmp_path, "--dset", "synthetic", "--arch", "resnet_small",
                                              trainer=trainer), "latin1.yaml", "not UTF-8", "save it as UTF-8")
    assert not (tmp_path / "exp").exists() or not any((tmp_path / "exp").iterdir())


def test_a_recipe_that_is_not_utf8(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(LATIN1 + b"modifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n")
    fails_with_one_line(capsys, lambda: train(tmp_path, "--dset", "synthetic", "--arch", "resnet_small",
                                              "--recipe", str(recipe)), "recipe.yaml", "not UTF-8")


def test_a_study_file_that_is_not_utf8(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_bytes(LATIN1 + b"name: t\n")
    fails_with_one_line(capsys, lambda: sweep.main([str(study)]), "study.yaml", "not UTF-8")


def test_analyze_out_pointing_at_an_existing_file(tmp_path, capsys):
    out = tmp_path / "report.md"
    out.write_text("my notes")
    fails_with_one_line(capsys, lambda: analyze.main(["--out", str(out), "--no-figures"]),
                        "report.md", "not a folder")
    assert out.read_text() == "my notes"


# -- item 10: misleading or silent ---------------------------------------------------------------------------

def test_a_misspelt_config_key_is_named_with_the_likely_intent(tmp_path, capsys):
    trainer = tmp_path / "t.yaml"
    trainer.write_text(TRAINER.replace("lr: 0.05", "lrr: 0.05"))
    fails_with_one_line(capsys, lambda: train(tmp_path, "--dset", "synthetic", "--arch", "resnet_small",
                                              trainer=trainer), "optimizer.lrr", "did you mean 'lr'")


def test_random_bytes_are_not_blamed_on_weights_only(tmp_path, capsys):
    ckpt = tmp_path / "random.pt"
    ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    err = fails_with_one_line(capsys, lambda: train(tmp_path, "--dset", "synthetic", "--from_checkpoint_path",
                                                    str(ckpt)), "random.pt", "not a torch.save file")
    assert "weights_only=False" not in err


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_malicious_pickle_is_refused_without_running_and_says_why(tmp_path, capsys):
    marker, ckpt = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, ckpt)
    err = fails_with_one_line(capsys, lambda: train(tmp_path, "--dset", "synthetic", "--from_checkpoint_path",
                                                    str(ckpt)), "evil.pt", "refused")
    assert not marker.exists()
    assert "re-run" not in err and "weights_only=False" not in err


def test_an_unknown_class_in_a_pickle_explains_how_to_convert_a_trusted_file(tmp_path, capsys):
    ckpt = tmp_path / "trainer_state.pt"
    torch.save({"state_dict": {}, "args": Path("/somewhere")}, ckpt)
    fails_with_one_line(capsys, lambda: train(tmp_path, "--dset", "synthetic", "--from_checkpoint_path", str(ckpt)),
                        "trainer_state.pt", "names code to load", "trusted_globals", "--convert")


def test_nan_weights_in_a_checkpoint_are_blamed_on_the_checkpoint(tmp_path, capsys, make_sparse_checkpoint):
    ckpt = tmp_path / "nan.pt"
    make_sparse_checkpoint(ckpt, sparsity=0.5)
    data = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in data["state_dict"].items() if v.dim() == 4)
    kept = data["state_dict"][name].flatten().nonzero()[0]
    data["state_dict"][name].view(-1)[kept] = float("nan")     # a kept weight: the mask check cannot see it
    torch.save(data, ckpt)
    err = fails_with_one_line(capsys, lambda: train(tmp_path, "--dset", "synthetic", "--from_checkpoint_path",
                                                    str(ckpt)), "nan.pt", name)
    assert "learning rate" not in err and "--lr" not in err


def test_a_worker_traceback_is_cut_to_the_users_message():
    wrapped = ("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise UserError(...)\n'
               "utils.errors.UserError: /data/a.jpg: empty file; remove it")
    assert one_line(wrapped) == "/data/a.jpg: empty file; remove it"
    assert one_line("plain message") == "plain message"


# -- item 11: class order on --eval_only ---------------------------------------------------------------------

def image_folder(root: Path, classes: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        for split, n in (("train", 4), ("test", 2)):
            for i in range(n):
                pixels = rng.integers(0, 64, (12, 12, 3), dtype=np.uint8) + 60 * c
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


def test_eval_only_refuses_a_head_trained_on_other_classes(tmp_path, capsys):
    trained_on = image_folder(tmp_path / "a", ["cat", "dog", "emu"])
    train(tmp_path, "--dset", "imagefolder", "--dset_path", str(trained_on), "--arch", "resnet_small",
          "--exp_name", "ft")
    model = tmp_path / "exp" / "ft" / "model.pt"
    assert torch.load(model, weights_only=True)["extra"]["classes"] == ["cat", "dog", "emu"]
    same = train(tmp_path, "--dset", "imagefolder", "--dset_path", str(trained_on), "--from_checkpoint_path",
                 str(model), "--eval_only", "--exp_name", "ev")
    assert 0.0 <= same["val_acc"] <= 100.0
    other = image_folder(tmp_path / "b", ["ant", "cat", "dog"])     # same width, classes shifted by one
    fails_with_one_line(capsys, lambda: train(tmp_path, "--dset", "imagefolder", "--dset_path", str(other),
                                              "--from_checkpoint_path", str(model), "--eval_only",
                                              "--exp_name", "ev2"),
                        "model.pt", "class order", "'cat' there, 'ant' here")


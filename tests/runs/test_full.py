"""main.py end to end on the synthetic dataset and a tiny native checkpoint."""
import csv
import math

import pytest
import torch
import yaml

import main
from policies.loggers import CheckpointSaver

TRAINER = """
epochs: 2
batch_size: 16
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
schedule: {name: step, milestones_epochs: [1]}
"""


@pytest.fixture()
def trainer(trainer_config):
    return trainer_config(TRAINER)


def run(tmp_path, ckpt, trainer, *extra):
    return main.main(["--dset", "synthetic", "--config_path", str(trainer), "--from_checkpoint_path", str(ckpt),
                      "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--manual_seed", "3",
                      "--no_progress", "--image_size", "16", *extra])


def test_full_finetuning_keeps_mask_and_writes_run_dir(tmp_path, sparse_checkpoint, trainer):
    ckpt, masks = sparse_checkpoint
    result = run(tmp_path, ckpt, trainer, "--exp_name", "r1", "--model_label", "GMP")
    run_dir = tmp_path / "exp" / "r1"
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "model.pt", "result.json"):
        assert (run_dir / name).exists(), name
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    final = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    for name, mask in masks.items():
        assert torch.equal(final[name] == 0, ~mask), name
    assert result["measured_sparsity"] == pytest.approx(0.8, abs=1e-3)
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert len(rows) == 1 and rows[0]["model"] == "GMP" and rows[0]["dset"] == "synthetic"
    assert rows[0]["sparsity"] == "0.8" and float(rows[0]["val_acc"]) == result["val_acc"]
    assert "git_commit" in (run_dir / "config.yaml").read_text()


def kill_after_first_checkpoint(monkeypatch):
    original = CheckpointSaver.on_epoch_end

    def save_then_die(self, state):
        original(self, state)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(CheckpointSaver, "on_epoch_end", save_then_die)


def test_resume_after_kill_equals_uninterrupted(tmp_path, sparse_checkpoint, trainer, monkeypatch):
    ckpt, _ = sparse_checkpoint
    straight = run(tmp_path, ckpt, trainer, "--exp_name", "straight")
    with monkeypatch.context() as m:
        kill_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, ckpt, trainer, "--exp_name", "killed")
    with pytest.raises(SystemExit):  # a started run is not overwritten without --resume
        run(tmp_path, ckpt, trainer, "--exp_name", "killed")
    resumed = run(tmp_path, ckpt, trainer, "--exp_name", "killed", "--resume")

    assert resumed["val_acc"] == straight["val_acc"]
    a = torch.load(tmp_path / "exp/straight/model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "exp/killed/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "exp/killed/metrics.jsonl").read_text().splitlines()) == 2
    # a finished run resumed again reports its result without re-appending
    again = run(tmp_path, ckpt, trainer, "--exp_name", "killed", "--resume")
    assert again["val_acc"] == straight["val_acc"]
    assert len(list(csv.DictReader(open(tmp_path / "exp/results.csv")))) == 2


def test_finished_run_whose_row_was_lost_gets_it_back_on_resume(tmp_path, sparse_checkpoint, trainer):
    ckpt, _ = sparse_checkpoint
    first = run(tmp_path, ckpt, trainer, "--exp_name", "r")
    table = tmp_path / "exp" / "results.csv"
    header = table.read_text().splitlines()[0]
    table.write_text(header + "\n")  # a crash between result.json and the results.csv append
    again = run(tmp_path, ckpt, trainer, "--exp_name", "r", "--resume")
    rows = list(csv.DictReader(open(table)))
    assert again["val_acc"] == first["val_acc"]
    assert len(rows) == 1 and float(rows[0]["val_acc"]) == first["val_acc"]


def test_resume_with_other_config_is_refused(tmp_path, sparse_checkpoint, trainer, monkeypatch, capsys):
    ckpt, _ = sparse_checkpoint
    with monkeypatch.context() as m:
        kill_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, ckpt, trainer, "--exp_name", "x")
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, ckpt, trainer, "--exp_name", "x", "--resume", "--lr", "0.5")
    assert exit_info.value.code == 2
    assert "cannot resume with a different configuration" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--dset", "synthetic", "--config_path", "nope.yaml", "--arch", "resnet_small"],
     "nope.yaml: config file not found"),
    (["--dset", "no_such_set", "--config_path", "configs/trainers/demo_finetune.yaml", "--arch", "resnet_small"],
     "unknown dataset"),
    (["--dset", "synthetic", "--config_path", "configs/trainers/demo_finetune.yaml",
      "--from_checkpoint_path", "missing.pth"], "missing.pth"),
    (["--dset", "synthetic", "--config_path", "configs/trainers/demo_finetune.yaml", "--arch", "resnet_smal"],
     "did you mean 'resnet_small'"),
    (["--dset", "synthetic", "--config_path", "configs/trainers/demo_finetune.yaml", "--arch", "resnet_small",
      "--epochs", "0"], "epochs"),
    (["--dset", "synthetic", "--config_path", "configs/trainers/demo_finetune.yaml", "--arch", "resnet_small",
      "--gpus", "zero"], "--gpus expects GPU ids"),
    (["--dset", "synthetic", "--config_path", "configs/trainers/demo_finetune.yaml", "--arch", "resnet_small",
      "--image_size", "1"], "'image_size': Input should be greater than or equal to 8"),
])
def test_bad_input_is_one_clear_line(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv + ["--experiment_root_path", str(tmp_path), "--no_progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


PRUNE_ALL = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 2
  - !GMPruningModifier
    init_sparsity: 0.05
    final_sparsity: 0.7
    start_epoch: 0
    end_epoch: 1
    update_frequency: 0.5
    params: __ALL_PRUNABLE__
"""


def test_a_recipe_that_prunes_the_classifier_records_its_mask_and_its_method(tmp_path, trainer):
    """Issue 11 row 14: model.pt holds the classifier's mask too, and a recipe-pruned --arch run is 'GMP'."""
    from utils.checkpoints import load_checkpoint

    recipe = tmp_path / "prune.yaml"
    recipe.write_text(PRUNE_ALL)
    result = main.main(["--dset", "synthetic", "--config_path", str(trainer), "--arch", "resnet_small",
                        "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress",
                        "--image_size", "16", "--recipe", str(recipe), "--exp_name", "pruned"])
    loaded = load_checkpoint(tmp_path / "exp" / "pruned" / "model.pt", keep_classifier=True)
    assert loaded.report.zeros_outside_mask == 0
    assert loaded.report.layer_sparsity()["fc.weight"] == pytest.approx(0.7, abs=0.01)
    assert result["model"] == "GMP" and loaded.extra["method"] == "GMP"
    assert result["measured_sparsity"] == pytest.approx(0.7, abs=0.01)


DISTILL = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 2
  - !ConstantPruningModifier
    params: __ALL_PRUNABLE__
  - !DistillationModifier
    start_epoch: 0
    end_epoch: 2
    hardness: 0.5
"""


def test_distillation_from_a_teacher_given_on_the_command_line(tmp_path, sparse_checkpoint, trainer,
                                                             make_sparse_checkpoint, capsys):
    ckpt, masks = sparse_checkpoint
    recipe = tmp_path / "distill.yaml"
    recipe.write_text(DISTILL)
    wrong, teacher = tmp_path / "wrong.pt", tmp_path / "teacher.pt"
    make_sparse_checkpoint(wrong, sparsity=0.0, num_classes=7)
    make_sparse_checkpoint(teacher, sparsity=0.0, seed=3, num_classes=4)   # synthetic has 4 classes
    args = ["--recipe", str(recipe), "--exp_name", "distilled"]
    with pytest.raises(SystemExit):
        run(tmp_path, ckpt, trainer, *args, "--distill_teacher", str(wrong))
    assert "predicts 7 classes, the student 4" in capsys.readouterr().err
    result = run(tmp_path, ckpt, trainer, *args, "--exp_name", "distilled2", "--distill_teacher", str(teacher))
    final = torch.load(tmp_path / "exp" / "distilled2" / "model.pt", weights_only=True)["state_dict"]
    for name, mask in masks.items():
        assert torch.equal(final[name] == 0, ~mask), name
    assert result["measured_sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_a_results_table_from_before_the_detection_columns_still_takes_classification_rows(
        tmp_path, sparse_checkpoint, trainer):
    """results.csv written before `task`, `map`, `map50` existed: a classification run appends its row (without
    them); a detection run is refused before training."""
    from utils.runs.dirs import OPTIONAL_COLUMNS, RESULT_COLUMNS

    ckpt, _ = sparse_checkpoint
    table = tmp_path / "exp" / "results.csv"
    table.parent.mkdir()
    old = [c for c in RESULT_COLUMNS if c not in OPTIONAL_COLUMNS]
    table.write_text(",".join(old) + "\n")
    run(tmp_path, ckpt, trainer, "--exp_name", "old_table")
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 1 and list(rows[0]) == old and float(rows[0]["val_acc"]) >= 0
    from tests.detection.conftest import make_yolo_tree

    data_yaml = make_yolo_tree(tmp_path / "yolo")
    with pytest.raises(SystemExit):
        main.main(["--dset", "yolo", "--dset_path", str(data_yaml), "--config_path", str(trainer), "--arch", "yolov5n",
                   "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress"])
    assert not (tmp_path / "exp" / "yolo_yolov5n_seed0").exists()


def test_a_run_recorded_before_a_field_existed_still_resumes_and_reports(tmp_path, sparse_checkpoint, trainer,
                                                                        monkeypatch, capsys):
    """config.yaml of an older version lacks the fields added since (precision, ema, mosaic, the schedule's
    warm-up keys, ..., the data's fingerprint): holding their defaults now is the same run; a new field set to
    something else is not."""
    from utils.config import dump_yaml, read_yaml

    def forget_new_fields(run_dir):
        path = run_dir / "config.yaml"
        config = read_yaml(path)
        for key in ("precision", "channels_last", "compile"):
            del config["options"][key]
        for key in ("ema", "mosaic", "accumulate_steps", "nominal_batch_size"):
            del config["trainer"][key]
        for key in ("warmup_min_steps", "warmup_momentum", "warmup_bias_lr"):    # inside the schedule
            del config["trainer"]["schedule"][key]
        assert len(config["dataset"].pop("content")["train"]) == 64     # recorded since, not by older versions
        path.write_text(dump_yaml(config))

    ckpt, _ = sparse_checkpoint
    with monkeypatch.context() as m:
        kill_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, ckpt, trainer, "--exp_name", "old")
    forget_new_fields(tmp_path / "exp" / "old")
    first = run(tmp_path, ckpt, trainer, "--exp_name", "old", "--resume")
    forget_new_fields(tmp_path / "exp" / "old")
    assert run(tmp_path, ckpt, trainer, "--exp_name", "old", "--resume")["val_acc"] == first["val_acc"]
    with pytest.raises(SystemExit):
        run(tmp_path, ckpt, trainer, "--exp_name", "old", "--resume", "--channels_last")
    assert "options.channels_last" in capsys.readouterr().err


def test_accumulated_steps_are_recorded_and_counted(tmp_path, sparse_checkpoint, trainer):
    """--accumulate_steps 2: one optimizer (and recipe) step per two batches; the masks hold; config.yaml says so."""
    ckpt, masks = sparse_checkpoint
    run(tmp_path, ckpt, trainer, "--exp_name", "acc", "--accumulate_steps", "2")
    run_dir = tmp_path / "exp" / "acc"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    batches = math.ceil(config["dataset"]["train_size"] / 16)
    assert batches >= 3 and config["derived"]["accumulate_steps"] == 2
    assert config["derived"]["steps_per_epoch"] == math.ceil(batches / 2)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 2 * math.ceil(batches / 2)
    final = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    for name, mask in masks.items():
        assert torch.equal(final[name] == 0, ~mask), name


LR_ONLY_RECIPE = """
modifiers:
  - !EpochRangeModifier
    end_epoch: 2
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 2
    lr_func: cosine
    init_lr: 0.05
    final_lr: 0.001
"""


def test_a_recipe_without_a_pruning_modifier_keeps_the_upstream_mask(tmp_path, sparse_checkpoint, trainer, caplog):
    ckpt, masks = sparse_checkpoint
    recipe = tmp_path / "lr_only.yaml"
    recipe.write_text(LR_ONLY_RECIPE)
    with caplog.at_level("WARNING"):
        result = run(tmp_path, ckpt, trainer, "--exp_name", "lr_only", "--recipe", str(recipe))
    final = torch.load(tmp_path / "exp" / "lr_only" / "model.pt", weights_only=True)["state_dict"]
    for name, mask in masks.items():
        assert torch.equal(final[name] == 0, ~mask), name
    assert result["measured_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert [r.message for r in caplog.records if "no pruning modifier" in r.message and "kept at zero" in r.message]


def test_settings_that_quietly_mean_less_than_asked_say_so(tmp_path, sparse_checkpoint, trainer, caplog):
    ckpt, _ = sparse_checkpoint
    with caplog.at_level("WARNING"):
        run(tmp_path, ckpt, trainer, "--exp_name", "acc", "--accumulate_steps", "1000", "--epochs", "1")
        run(tmp_path, ckpt, trainer, "--exp_name", "few", "--max_train_samples", "2", "--epochs", "1")
    text = [r.getMessage() for r in caplog.records]
    assert [m for m in text if "accumulation over 1000 batches, but an epoch has 4" in m]
    assert [m for m in text if "--max_train_samples 2 leaves 2 of 4 classes without a training image" in m]

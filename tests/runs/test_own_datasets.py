"""A user's own datasets: two ImageFolder trees (or YOLO folders) are two datasets in run names and results, and the
user may name them."""
import csv

import pytest

from tests.runs.test_bad_inputs import fails_with_one_line, image_folder, train
from utils.runs.options import RunOptions


def test_two_image_folders_are_two_datasets_in_runs_and_results(tmp_path):
    flowers = image_folder(tmp_path / "flowers", ["a", "b"])
    birds = image_folder(tmp_path / "birds", ["a", "b"])
    for data in (flowers, birds):            # same architecture, same seed: only the data differ
        train(tmp_path, "--dset", "imagefolder", "--dset_path", str(data), "--arch", "resnet_small", "--resume")
    named = train(tmp_path, "--dset", "imagefolder", "--dset_path", str(birds), "--arch", "resnet_small",
                  "--dset_name", "birds-v2")
    runs = sorted(p.name for p in (tmp_path / "exp").iterdir() if p.is_dir())
    assert runs == ["birds-v2_resnet_small_seed1", "birds_resnet_small_seed1", "flowers_resnet_small_seed1"]
    with open(tmp_path / "exp" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["dset"] for r in rows] == ["flowers", "birds", "birds-v2"] and named["dset"] == "birds-v2"


def test_a_dataset_name_that_cannot_name_a_run_is_refused(tmp_path, capsys):
    data = image_folder(tmp_path / "flowers", ["a", "b"])
    fails_with_one_line(capsys, lambda: train(tmp_path, "--dset", "imagefolder", "--dset_path", str(data),
                                              "--arch", "resnet_small", "--dset_name", "my/flowers"), "dset_name")


@pytest.mark.parametrize("options, label", [
    ({"dataset": "cifar10", "dataset_path": "/data/cifar"}, "cifar10"),
    ({"dataset": "imagefolder", "dataset_path": "/data/flowers/"}, "flowers"),
    ({"dataset": "imagefolder", "dataset_path": "/data/flowers", "dataset_name": "fl"}, "fl"),
    ({"dataset": "yolo", "dataset_path": "/data/voc/data.yaml"}, "voc"),
    ({"dataset": "yolo", "dataset_path": "/data/coco128.yaml"}, "coco128"),
    ({"dataset": "/data/voc/data.yaml"}, "voc"),
    ({"dataset": "yolo"}, "yolo"),
])
def test_the_dataset_label(options, label):
    assert RunOptions(**options).dataset_label() == label


def test_a_study_names_two_image_folders_apart_and_refuses_one_name_twice(tmp_path):
    from pydantic import ValidationError

    from utils.studies.cells import expand
    from utils.studies.study import Study

    checkpoint = tmp_path / "up.pt"
    checkpoint.write_bytes(b"weights")
    study = {"name": "s", "experiment_root": str(tmp_path / "exp"), "seeds": [0],
             "upstreams": [{"name": "dense", "path": str(checkpoint), "model": "Dense", "sparsity": 0.0}],
             "linear": {"options": {"solver": "lbfgs"}},
             "datasets": [{"name": "flowers", "dataset": "imagefolder", "path": "/data/flowers"},
                          {"name": "birds", "dataset": "imagefolder", "path": "/data/birds"}, {"name": "digits"}]}
    cells, _ = expand(Study.model_validate(study), {"dense": checkpoint})
    assert [(c.dataset, c.options["dataset"], c.options.get("dataset_name")) for c in cells] == [
        ("flowers", "imagefolder", "flowers"), ("birds", "imagefolder", "birds"), ("digits", "digits", None)]
    assert RunOptions(**{k: v for k, v in cells[0].options.items() if k in RunOptions.model_fields}
                      ).dataset_label() == "flowers"
    twice = {**study, "datasets": [{"name": "imagefolder", "path": "/data/a"}, {"name": "imagefolder", "path": "/b"}]}
    with pytest.raises(ValidationError, match="dataset names must be unique.*name: flowers, dataset: imagefolder"):
        Study.model_validate(twice)


def test_a_run_directory_model_file_names_runs_by_its_folder(tmp_path, make_sparse_checkpoint):
    from utils.runs.plan import checkpoint_label

    assert checkpoint_label("/exp/upstream/gmp_90_47ad/model.pt") == "gmp_90_47ad"
    assert checkpoint_label("/ckpts/gmp_90.pth") == "gmp_90" and checkpoint_label("/a/b/x.pth.tar") == "x.pth"
    for run in ("gmp_80_aa", "gmp_90_bb"):
        make_sparse_checkpoint(tmp_path / "up" / run / "model.pt", sparsity=0.8, num_classes=4)
        train(tmp_path, "--dset", "synthetic", "--from_checkpoint_path", str(tmp_path / "up" / run / "model.pt"),
              "--epochs", "1")
    assert sorted(p.name for p in (tmp_path / "exp").iterdir() if p.is_dir()) == [
        "synthetic_gmp_80_aa_seed1", "synthetic_gmp_90_bb_seed1"]


def test_the_worker_cap_is_said_once_per_process(caplog, monkeypatch):
    """Issue 27 item 12: the cap was logged for every loader of every run."""
    import logging

    from utils.runs import setup

    monkeypatch.setattr(setup, "usable_cores", lambda: 2)
    monkeypatch.setattr(setup, "_CAPPED_SAID", set())
    with caplog.at_level(logging.INFO, logger="utils.runs.setup"):
        assert [setup.loader_workers(4) for _ in range(3)] == [2, 2, 2] and setup.loader_workers(1) == 1
    assert sum("workers asked for" in r.getMessage() for r in caplog.records) == 1

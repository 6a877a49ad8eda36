"""The tidy results loader: the paper's files, the project's results.csv, duplicates, malformed input."""
from __future__ import annotations

import csv
import hashlib
import logging

import pandas as pd
import pytest

from utils.analysis import (
    PAPER_RESULTS_DIR,
    TIDY_COLUMNS,
    arch_label,
    dataset_label,
    find_duplicates,
    load_results,
    read_result_file,
    result_files,
)
from utils.errors import UserError

PAPER_FILES = {  # name: (data rows, sha256 of the file as published)
    "full_transfer_results.txt": (723, "f832254c5c347ec0379b6716cb3572c86db4283945811f0fe0678a0bb03392c1"),
    "linear_transfer_results.txt": (1200, "d5abab094c7aef76aa076cfe34e5a0c7ffe97faa39a169e3d9f8da5feb66164f"),
    "full_mobilenet_transfer_results.txt": (132, "12ad96e2b236262bd5fb0a902c6eaeb4481214fc39a1a96a0c84387ca34ec618"),
    "linear_mobilenet_transfer_results.txt": (600, "8b8461920effb737cd950a3887a3b8402d177ebd7abed63f412add9adb3a128e"),
}
HEADER = "dset,model,sparsity,seed,val_acc\n"


@pytest.mark.parametrize("name", sorted(PAPER_FILES))
def test_paper_file_is_unchanged_and_row_count_is_pinned(name):
    path = PAPER_RESULTS_DIR / name
    rows, sha = PAPER_FILES[name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    with open(path, newline="") as f:
        assert sum(1 for row in list(csv.reader(f))[1:] if row) == rows
    assert len(read_result_file(path)) == rows


@pytest.mark.parametrize("name, finetuning, arch", [
    ("full_transfer_results.txt", "full", "ResNet-50"),
    ("linear_transfer_results.txt", "linear", "ResNet-50"),
    ("full_mobilenet_transfer_results.txt", "full", "MobileNetV1"),
    ("linear_mobilenet_transfer_results.txt", "linear", "MobileNetV1"),
])
def test_paper_files_tidy_schema(name, finetuning, arch):
    df = read_result_file(PAPER_RESULTS_DIR / name)
    assert list(df.columns) == [*TIDY_COLUMNS, "source", "line"]  # the trailing-comma column is gone
    assert set(df["finetuning"]) == {finetuning} and set(df["arch"]) == {arch}
    assert df["seed"].dtype.kind == "i" and df["val_acc"].between(0, 1).all()
    assert df["sparsity"].between(0, 1).all()
    assert df["dataset"].nunique() == 12
    assert set(df.loc[df["dset"] == "SUN", "dataset"]) == {"SUN397"}
    assert set(df.loc[df["dset"] == "birds", "dataset"]) == {"Birdsnap"}
    first = df.iloc[0]
    with open(PAPER_RESULTS_DIR / name, newline="") as f:
        row = list(csv.reader(f))[1]
    assert (first["dset"], first["method"], first["sparsity"], f"seed_{first['seed']}", first["val_acc"]) == \
        (row[0], row[1], float(row[2]), row[3], float(row[4]))
    assert first["line"] == 2


def test_load_paper_results_reports_mobilenet_duplicates(caplog):
    with caplog.at_level(logging.WARNING, logger="utils.analysis.results"):
        df = load_results()
    assert len(df) == 723 + 1200 + 120 + 600
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "12 duplicate result row(s) in 12 group(s)" in message
    assert "method=STR sparsity=0.75 seed=21" in message and "full_mobilenet_transfer_results.txt:9" in message

    everything = load_results(PAPER_RESULTS_DIR, duplicates="all")
    dups = find_duplicates(everything)
    assert len(everything) == 2655 and len(dups) == 24
    assert set(dups["method"]) == {"STR"} and set(dups["sparsity"]) == {0.75} and set(dups["arch"]) == {"MobileNetV1"}

    def aircraft(d):
        return d[(d["arch"] == "MobileNetV1") & (d["finetuning"] == "full") & (d["dset"] == "aircraft")
                 & (d["method"] == "STR") & (d["sparsity"] == 0.75)]["val_acc"].tolist()

    assert aircraft(df) == [0.7443]
    assert aircraft(load_results(duplicates="last")) == [0.7422]
    with pytest.raises(UserError, match="duplicate result row"):
        load_results(duplicates="error")


def test_project_results_csv_with_extra_columns(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("dset,model,sparsity,seed,val_acc,finetuning,arch,checkpoint,lr,epochs,run_dir\n"
                    "sun397,AC/DC,0.9,21,0.61,full,resnet50,ckpt/acdc90.pth,0.01,100,runs/a\n"
                    "cifar10,AC/DC,0.9,seed_22,0.95,linear,mobilenet_v1,ckpt/acdc90.pth,0.1,,runs/b\n")
    df = read_result_file(path)
    assert df["finetuning"].tolist() == ["full", "linear"]
    assert df["arch"].tolist() == ["ResNet-50", "MobileNetV1"]
    assert df["seed"].tolist() == [21, 22] and df["dataset"].tolist() == ["SUN397", "CIFAR-10"]
    assert df["dset"].tolist() == ["sun397", "cifar10"]
    assert df["lr"].tolist() == [0.01, 0.1] and df["checkpoint"].tolist() == ["ckpt/acdc90.pth"] * 2
    assert df["epochs"].iloc[0] == 100 and pd.isna(df["epochs"].iloc[1])
    combined = load_results([PAPER_RESULTS_DIR, path], duplicates="all")
    assert len(combined) == 2657 and "run_dir" in combined.columns


def test_same_run_under_a_dataset_alias_is_a_duplicate(tmp_path):
    (tmp_path / "full_a.csv").write_text(HEADER + "SUN,Dense,0,seed_1,0.5\n")
    (tmp_path / "full_b.csv").write_text(HEADER + "sun397,Dense,0,1,0.6\n")
    assert len(find_duplicates(load_results(tmp_path, duplicates="all"))) == 2
    assert load_results(tmp_path)["val_acc"].tolist() == [0.5]


def test_trailing_commas_and_blank_lines_are_tolerated(tmp_path):
    path = tmp_path / "linear_x.csv"
    path.write_text("dset,model,sparsity,seed,val_acc,\n\ndtd,Dense,0.0,seed_3,0.7,\ndtd,STR,0.9,seed_3,0.6\n\n")
    df = read_result_file(path)
    assert df["val_acc"].tolist() == [0.7, 0.6] and df["line"].tolist() == [3, 4]


@pytest.mark.parametrize("text, match", [
    ("dset,model,sparsity,seed\ndtd,Dense,0,1\n", r"full_bad\.csv:1: missing column\(s\) val_acc"),
    ("dset,sparsity,seed,val_acc\ndtd,0,1,0.5\n", r"full_bad\.csv:1: missing column\(s\) model \(or method\)"),
    (HEADER + "dtd,Dense,0,1,0.5\ndtd,STR,0.9,1,abc\n", r"full_bad\.csv:3: val_acc 'abc' is not a number"),
    (HEADER + "dtd,Dense,0,1,nan\n", r"full_bad\.csv:2: val_acc nan is outside \[0, 1\]"),
    (HEADER + "dtd,Dense,0,1,83.6\n", r"full_bad\.csv:2: val_acc 83\.6 is outside \[0, 1\].*0\.8362"),
    (HEADER + "dtd,STR,90,1,0.5\n", r"full_bad\.csv:2: sparsity 90 is outside \[0, 1\]"),
    (HEADER + "dtd,STR,-0.1,1,0.5\n", r"full_bad\.csv:2: sparsity -0\.1 is outside"),
    (HEADER + "dtd,Dense,0,1,0.5\ndtd,STR,0.9,1\n",
     r"full_bad\.csv:3: ragged row: 4 field\(s\) where the header has 5"),
    (HEADER + "dtd,STR,0.9,1,0.5,extra\n", r"full_bad\.csv:2: ragged row: 6 field"),
    (HEADER + "dtd,STR,0.9,first,0.5\n", r"full_bad\.csv:2: seed 'first' is neither an integer"),
    (HEADER + ",STR,0.9,1,0.5\n", r"full_bad\.csv:2: empty dset"),
    (HEADER, r"full_bad\.csv: no data rows"),
    ("dset,model,,seed,val_acc\ndtd,STR,,1,0.5\n", r"full_bad\.csv:1: empty column name at position 3"),
    ("dset,model,sparsity,seed,seed,val_acc\n", r"full_bad\.csv:1: column\(s\) seed appear more than once"),
    ("dset,model,sparsity,seed,val_acc,finetuning\ndtd,STR,0.9,1,0.5,partial\n",
     r"full_bad\.csv:2: finetuning 'partial' is not one of full, linear"),
])
def test_malformed_file_gives_user_error_with_file_and_line(tmp_path, text, match):
    path = tmp_path / "full_bad.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        load_results([path])


def test_finetuning_must_be_known(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(HEADER + "dtd,STR,0.9,1,0.5\n")
    with pytest.raises(UserError, match=r"results\.csv:2: no finetuning value .* add a finetuning column"):
        read_result_file(path)


def test_missing_paths_and_empty_directories(tmp_path):
    with pytest.raises(UserError, match=r"nope\.csv: results file not found"):
        load_results([tmp_path / "nope.csv"])
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(UserError, match="directory holds no"):
        result_files([tmp_path])
    with pytest.raises(UserError, match="duplicates='maybe'"):
        load_results(duplicates="maybe")


def test_name_labels():
    assert [dataset_label(d) for d in ("SUN", "sun397", "birds", "Birdsnap", "cifar10", "my_set")] == \
        ["SUN397", "SUN397", "Birdsnap", "Birdsnap", "CIFAR-10", "my_set"]
    assert [arch_label(a) for a in ("resnet50", "ResNet-50", "mobilenet_v1", "vit")] == \
        ["ResNet-50", "ResNet-50", "MobileNetV1", "vit"]


def test_detection_rows_are_scored_by_their_map(tmp_path):
    from utils.analysis.report import score_title

    table = tmp_path / "results.csv"
    table.write_text("dset,model,sparsity,seed,val_acc,finetuning,arch,task,map,map50\n"
                     "shapes,GMP,0.9,0,0.81,full,resnet_small,classification,,\n"
                     "voc,GMP,0.9,0,,full,yolov5s,detection,0.412,0.655\n")
    df = read_result_file(table)
    assert df["val_acc"].tolist() == [0.81, 0.412]
    assert score_title("yolov5s") == "mAP@0.5:0.95 (%)" and score_title("ResNet-50") == "Top-1 accuracy (%)"
    table.write_text("dset,model,sparsity,seed,val_acc,finetuning,arch,task,map,map50\n"
                     "voc,GMP,0.9,0,,full,yolov5s,detection,,\n")
    with pytest.raises(UserError, match="map '' is not a number"):
        read_result_file(table)

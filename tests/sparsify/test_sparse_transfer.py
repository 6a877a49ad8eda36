"""sparse_transfer.py: use cases, the zoo and optim-level selection, --data validation, one tiny run end to end."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import sparse_transfer
from models import build_model
from utils.checkpoints import save_native_checkpoint
from utils.errors import UserError
from utils.sparsify import (
    DEFAULT_ZOO,
    ZooEntry,
    backbone_params,
    entry_from_checkpoint,
    load_zoo,
    optim_target,
    resolve_use_case,
    select_model,
)
from utils.sparsity import magnitude_prune_

# ---------------------------------------------------------------- use cases


@pytest.mark.parametrize("name", ["cv-classification", "CV_Classification", "ic", "IC", "classification",
                                  "image_classification", "Image-Classification", "image classification",
                                  "img-classification"])
def test_classification_aliases(name):
    case = resolve_use_case(name)
    assert case.name == "cv-classification" and case.dataset == "imagefolder"


@pytest.mark.parametrize("name", ["cv-detection", "Object_Detection", "od", "detection"])
def test_detection_is_a_use_case(name):
    case = resolve_use_case(name)
    assert (case.name, case.dataset, case.task) == ("cv-detection", "yolo", "detection")


@pytest.mark.parametrize("name, canonical", [("segmentation", "cv-segmentation"), ("QA", "nlp-question_answering"),
                                             ("nlp-question-answering", "nlp-question_answering"),
                                             ("text_classification", "nlp-text_classification"),
                                             ("sentiment-analysis", "nlp-sentiment_analysis"),
                                             ("token-classification", "nlp-token_classification"),
                                             ("NER", "nlp-named_entity_recognition")])
def test_unsupported_use_cases_say_what_is_supported(name, canonical):
    with pytest.raises(UserError, match="not supported yet") as err:
        resolve_use_case(name)
    assert canonical in str(err.value) and "supported: cv-classification" in str(err.value)


def test_unknown_use_case_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown use case 'audio'.*cv-detection.*supported now: cv-classification"):
        resolve_use_case("audio")


# ---------------------------------------------------------------- optim level -> model


def entry(name, params, sparsity, quantized=False):
    return ZooEntry(name=name, path=f"{name}.pt", arch="resnet50", sparsity=sparsity, quantized=quantized,
                    params=params)


ZOO = [entry("r50_dense", 23_500_000, 0.0), entry("r18_dense_q", 11_200_000, 0.0, quantized=True),
       entry("r50_80", 23_500_000, 0.8), entry("r50_90", 23_500_000, 0.9), entry("r50_95", 23_500_000, 0.95),
       entry("mobilenet_75", 3_200_000, 0.75)]
# Pruned by nonzero parameters: mobilenet_75 0.80M < r50_95 1.18M < r50_90 2.35M < r50_80 4.7M.


@pytest.mark.parametrize("level, expected, pruned, int8", [
    (0.0, "r50_dense", False, False),      # largest dense, no optimizations (non-quantized preferred)
    (0.1, "r18_dense_q", False, True),     # largest dense with INT8: the quantized dense entry is preferred
    (0.25, "r50_80", True, True),          # largest pruned + INT8 = most nonzero weights
    (0.49, "r50_80", True, True),
    (0.5, "r50_90", True, True),           # medium = upper median of 4
    (0.74, "r50_90", True, True),
    (0.75, "mobilenet_75", True, True),    # smallest = fewest nonzero weights
    (1.0, "mobilenet_75", True, True),
])
def test_optim_level_boundaries(level, expected, pruned, int8):
    selection = select_model(ZOO, level)
    assert selection.entry.name == expected and selection.note is None
    assert (selection.target.pruned, selection.target.int8) == (pruned, int8)


@pytest.mark.parametrize("level", [-0.01, 1.01])
def test_optim_level_out_of_range(level):
    with pytest.raises(UserError, match=r"--optim-level must be in \[0, 1\]"):
        optim_target(level)


def test_medium_and_quantized_preference():
    zoo = [entry("a", 100, 0.5), entry("b", 100, 0.9), entry("c", 100, 0.7)]
    assert select_model(zoo, 0.5).entry.name == "c"               # middle of three
    assert select_model(zoo[:2], 0.5).entry.name == "a"          # upper median of two
    quantized = [*zoo, entry("q", 100, 0.95, quantized=True)]
    assert {select_model(quantized, lvl).entry.name for lvl in (0.3, 0.6, 0.9)} == {"q"}


def test_no_entry_of_the_asked_kind_falls_back_with_a_note():
    pruned_only = [entry("p90", 100, 0.9), entry("p50", 100, 0.5)]
    s = select_model(pruned_only, 0.0, zoo_path="z.yaml")
    assert s.entry.name == "p50" and not s.target.int8
    assert "z.yaml has no dense model for optim-level 0, which asks for the largest dense model, fp32" in s.note
    assert "largest pruned model instead (p50)" in s.note
    dense_only = [entry("big", 200, 0.0), entry("small", 100, 0.0)]
    s = select_model(dense_only, 1.0)
    assert s.entry.name == "small" and s.target.int8 and "no pruned model" in s.note


def test_shipped_zoo_is_empty_and_says_how_to_add_an_entry():
    entries = load_zoo(DEFAULT_ZOO)
    assert entries == []
    with pytest.raises(UserError, match=r"lists no models; add one entry .*name: .*path: .*arch: .*sparsity"):
        select_model(entries, 0.5, zoo_path=DEFAULT_ZOO)


def test_zoo_paths_are_relative_to_the_file_and_sizes_come_from_the_arch(tmp_path):
    (tmp_path / "sub").mkdir()
    zoo = tmp_path / "sub" / "zoo.yaml"
    zoo.write_text("models:\n  - {name: s, path: ../ck/s.pt, arch: resnet_small, sparsity: 0.5,"
                   " arch_kwargs: {widths: [8, 16, 32]}}\n"
                   "  - {name: t, path: /abs/t.pt, arch: resnet18, sparsity: 0}\n")
    s, t = load_zoo(zoo)
    assert s.path == str(tmp_path / "sub" / "../ck/s.pt") and t.path == "/abs/t.pt"
    model = build_model("resnet_small", num_classes=3, widths=[8, 16, 32])
    assert s.params == backbone_params("resnet_small", {"widths": [8, 16, 32]}) == sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("fc."))
    assert t.params > s.params


@pytest.mark.parametrize("text, message", [
    ("models:\n  - {name: a, path: a.pt, arch: resnet51, sparsity: 0.5}\n", "did you mean 'resnet50'"),
    ("models:\n  - {name: a, path: a.pt, arch: resnet50, sparsity: 1.5}\n", "models.0.sparsity"),
    ("models:\n  - {name: a, path: a.pt, arch: resnet50, sparsity: 0.5, sparsty: 1}\n", "models.0.sparsty"),
    ("models:\n  - {name: a, path: a.pt, arch: resnet50, sparsity: 0}\n  - {name: a, path: b.pt, arch: resnet50,"
     " sparsity: 0}\n", "appears twice"),
])
def test_bad_zoo_files_name_the_key(tmp_path, text, message):
    (tmp_path / "zoo.yaml").write_text(text)
    with pytest.raises(UserError, match=message):
        load_zoo(tmp_path / "zoo.yaml")


def test_empty_models_key_and_missing_zoo(tmp_path):
    (tmp_path / "zoo.yaml").write_text("models:\n#  - {name: a}\n")
    assert load_zoo(tmp_path / "zoo.yaml") == []
    with pytest.raises(UserError, match="zoo file not found"):
        load_zoo(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- --data


def write_tree(root, *, classes=3, train=8, test=3, size=16, split="val"):
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = rng.integers(0, 255, 3)
        for part, count in (("train", train), (split, test)):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.integers(-30, 30, (size, size, 3))
                Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def cli_error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        sparse_transfer.main(list(argv))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0, err
    return err


def test_bad_data_trees_give_clear_errors(tmp_path, capsys):
    base = ["--use-case", "ic", "--zoo", str(DEFAULT_ZOO), "--data"]
    err = cli_error(capsys, *base, str(tmp_path / "missing"))
    assert err.startswith("error: --data: ") and "does not exist" in err and "train/<class>/<image>" in err
    (tmp_path / "flat").mkdir()
    err = cli_error(capsys, *base, str(tmp_path / "flat"))
    assert "matches no layout" in err and "train/<class>/<image> and test/<class>/<image>" in err
    no_val = write_tree(tmp_path / "noval", test=0, split="val")
    (no_val / "val").rename(no_val / "elsewhere")
    assert "found train/ but no test split (test/, valid/ or val/)" in cli_error(capsys, *base, str(no_val))
    empty = write_tree(tmp_path / "emptyclass")
    for f in (empty / "val" / "class1").iterdir():
        f.unlink()
    err = cli_error(capsys, *base, str(empty))
    assert "class1: class folder has no images" in err
    good = write_tree(tmp_path / "good", split="test")
    assert "lists no models; add one entry" in cli_error(capsys, *base, str(good))   # valid data, empty zoo
    assert "not supported yet" in cli_error(capsys, "--use-case", "segmentation", "--data", str(good))
    assert "a folder without a data.yaml; give DIR/data.yaml" in cli_error(capsys, "--use-case", "cv_detection",
                                                                           "--data", str(good))


# ---------------------------------------------------------------- end to end


def test_end_to_end_sparse_transfer_keeps_sparsity_and_writes_summary(tmp_path, capsys, make_sparse_checkpoint):
    data = write_tree(tmp_path / "flowers")
    masks = make_sparse_checkpoint(tmp_path / "ck" / "sparse.pt", sparsity=0.8, num_classes=5, method="GMP")
    make_sparse_checkpoint(tmp_path / "ck" / "dense.pt", sparsity=0.0, seed=1, num_classes=5)
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("models:\n"
                   "  - {name: small80, path: ck/sparse.pt, flavour: native, arch: resnet_small, sparsity: 0.8}\n"
                   "  - {name: small_dense, path: ck/dense.pt, arch: resnet_small, sparsity: 0.0}\n")
    out = tmp_path / "runs" / "st"
    summary = sparse_transfer.main([
        "--use-case", "Image_Classification", "--data", str(data), "--zoo", str(zoo), "--out", str(out),
        "--recipe", "configs/recipes/demo_sparse_transfer.yaml",
        "--recipe_args", "num_epochs=2,quantization_start_epoch=1", "--batch_size", "4", "--accumulate_steps", "2",
        "--image_size", "16",
        "--workers", "0", "--no_progress", "--latency_runs", "2"])
    assert summary["model"]["name"] == "small80" and summary["int8"] and summary["notes"] == []
    saved = json.loads((out / "summary.json").read_text())
    assert saved["epochs"] == 2 and 0 <= saved["accuracy"] <= 1
    assert yaml.safe_load((out / "config.yaml").read_text())["derived"]["accumulate_steps"] == 2
    assert saved["sparsity"] == pytest.approx(0.8, abs=1e-3) == saved["upstream_sparsity"]
    assert saved["sizes"]["onnx_int8_bytes"] < saved["sizes"]["onnx_fp32_bytes"]
    assert saved["sizes"]["checkpoint_compressed_bytes"] < saved["sizes"]["checkpoint_dense_bytes"]
    lat = saved["latency"]
    assert lat["dense_reference"] == "small_dense"
    assert min(lat["model_ms"], lat["dense_ms"], lat["model_fp32_ms"]) > 0
    assert lat["speedup_vs_dense"] == pytest.approx(lat["dense_ms"] / lat["model_ms"])
    assert (out / "export" / "model_int8.onnx").exists() and (out / "export" / "dense_reference_fp32.onnx").exists()
    final = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    for name, mask in masks.items():
        assert torch.equal(final[name] == 0, ~mask), name
    report = (out / "summary.md").read_text()
    assert "speed-up vs dense" in report and report in capsys.readouterr().out
    # issue 27 item 11: the dataset by name, the ONNX check in the report, the results.csv the row went to
    assert report.startswith(f"# Sparse transfer: small80 -> {data.name}\n") and saved["dataset"] == data.name
    assert "| ONNX int8 vs torch (" in report and "top-1 agreement" in report
    assert f"its row in `{out.parent / 'results.csv'}`" in report
    # ... and the row's method is the upstream's (how its zeros were made), the transfer recipe in its own column
    row = pd.read_csv(out.parent / "results.csv").iloc[0]
    assert row["model"] == "GMP" and row["recipe"] == "configs/recipes/demo_sparse_transfer.yaml"
    assert "- method: GMP (" in report and saved["method"] == "GMP"
    (out / "result.json").unlink()              # as if killed before the end: this command's flags in the line
    with pytest.raises(SystemExit):
        sparse_transfer.main(["--use-case", "ic", "--data", str(data), "--zoo", str(zoo), "--out", str(out)])
    assert "holds an unfinished transfer (checkpoint.pt); pass --resume to continue it, or choose another --out" \
        in capsys.readouterr().err


def test_model_flag_reads_arch_and_sparsity_from_the_file(tmp_path):
    model = build_model("resnet_small", num_classes=4, widths=[8, 16, 32])
    magnitude_prune_(model, 0.6)
    save_native_checkpoint(tmp_path / "m.pt", model, arch="resnet_small", arch_kwargs={"widths": [8, 16, 32]})
    e = entry_from_checkpoint(str(tmp_path / "m.pt"), None)
    assert (e.name, e.arch, e.arch_kwargs, e.quantized) == ("m", "resnet_small", {"widths": [8, 16, 32]}, False)
    assert e.pruned and e.sparsity == pytest.approx(0.6, abs=0.01)
    assert e.params == backbone_params("resnet_small", {"widths": [8, 16, 32]})
    with pytest.raises(UserError, match="--model .*nope.pt: checkpoint not found"):
        entry_from_checkpoint(str(tmp_path / "nope.pt"), None)


def test_a_zoo_without_a_model_of_the_use_cases_task_says_which_to_add(tmp_path, capsys, make_sparse_checkpoint):
    from tests.detection.conftest import make_yolo_tree
    make_sparse_checkpoint(tmp_path / "resnet.pt")
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": [{"name": "small", "path": "resnet.pt", "arch": "resnet_small",
                                               "sparsity": 0.8}]}))
    err = cli_error(capsys, "--use-case", "detection", "--zoo", str(zoo), "--data", str(make_yolo_tree(tmp_path / "d")))
    assert "has no detection model for --use-case detection (it lists 1 classification model(s))" in err
    assert "arch: yolov5s" in err and "resnet50" not in err


def test_a_chance_level_accuracy_is_flagged():
    from utils.sparsify.run import chance_note

    assert "near chance (0.1000 for 10 classes)" in chance_note(0.12, 10)
    assert chance_note(0.9, 10) is None and chance_note(0.6, 2) is not None and chance_note(0.8, 2) is None


def test_with_model_the_log_names_it_not_the_zoos_choice(tmp_path, caplog, make_sparse_checkpoint):
    """Issue 27 item 11: with --model the run logged the optim level's zoo choice ("the largest pruned model")."""
    import logging

    from tests.runs.test_bad_inputs import image_folder
    from utils.sparsify import SparseTransferOptions, run_sparse_transfer

    data = image_folder(tmp_path / "flowers", ["a", "b"])
    model = tmp_path / "mine.pt"
    make_sparse_checkpoint(model, sparsity=0.8, num_classes=2)
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text("{}")           # stop right after the choice is logged
    opts = SparseTransferOptions(use_case="ic", data=str(data), model=str(model), out=str(out), optim_level=0.5)
    with caplog.at_level(logging.INFO, logger="utils.sparsify.run"), pytest.raises(UserError, match="already holds"):
        run_sparse_transfer(opts)
    assert f"--model {model}" in caplog.text and "optim-level 0.5: INT8 (QAT)" in caplog.text
    assert "largest" not in caplog.text


def test_a_transfer_logs_its_data_checkpoint_and_recipe_once(tmp_path, caplog, make_sparse_checkpoint):
    """Issue 27 item 12: the data was loaded and logged three times (checked, trained on, sampled for the export
    check), the checkpoint's flavour detected three times, the recipe's shortening warned twice; a run directory's
    model.pt is named by its folder in the run's name and the summary's title."""
    import logging

    data = write_tree(tmp_path / "flowers")
    model = tmp_path / "gmp_80_abc" / "model.pt"
    make_sparse_checkpoint(model, sparsity=0.8, num_classes=3, method="GMP")
    with caplog.at_level(logging.INFO):
        summary = sparse_transfer.main([
            "--use-case", "ic", "--data", str(data), "--model", str(model), "--out", str(tmp_path / "run"),
            "--recipe_args", '{"num_epochs": 2, "quantization_start_epoch": 1}', "--image_size", "16",
            "--workers", "0", "--no_progress", "--latency_runs", "2", "--engine", "onnxruntime"])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("dataset imagefolder" in m for m in messages) == 1, messages
    assert sum("detected checkpoint flavour" in m for m in messages) <= 1, messages
    shortened = [m for m in messages if "num_epochs 50 -> 2" in m]
    assert len(shortened) == 1, messages
    assert summary["model"]["name"] == "gmp_80_abc"
    assert (tmp_path / "run" / "summary.md").read_text().startswith(f"# Sparse transfer: gmp_80_abc -> {data.name}")

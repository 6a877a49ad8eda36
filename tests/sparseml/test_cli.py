"""The SparseML command lines of the seeds (000 and 003), pasted as they are with the paths replaced by tiny trees
and the zoo stubs registered in a temporary zoo, run as this project's full fine-tuning."""
import json
import os
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from models import build_model
from tests.checkpoints import sparseml_layout as sml
from tests.data.test_datasets import make_folders, write_image
from utils.checkpoints import load_checkpoint, save_native_checkpoint
from utils.paths import RECIPE_DIR
from utils.sparseml.__main__ import main
from utils.sparsify.zoo import ZOO_ENV

STUB_85 = "cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned85_quant-none-vnni"
STUB_MODERATE = "cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned_quant-moderate"

# Seed 003's training and evaluation commands, and seed 000's pytorch_vision.py command, as printed there.
SEED_003_TRAIN = f"""sparseml.image_classification.train \\
    --recipe-path zoo:{STUB_85}?recipe_type=original \\
    --pretrained True \\
    --arch-key resnet50 \\
    --dataset imagenet \\
    --dataset-path /PATH/TO/IMAGENET \\
    --train-batch-size 256 \\
    --test-batch-size 1000 \\
    --loader-num-workers 16 \\
    --model-tag resnet50-imagenet-pruned85_quant-none-vnni"""
SEED_003_EVAL = f"""sparseml.image_classification.train \\
    --eval-mode \\
    --checkpoint-path zoo:{STUB_85} \\
    --arch-key resnet50 \\
    --dataset imagenet \\
    --dataset-path /PATH/TO/IMAGENET \\
    --train-batch-size 256 \\
    --test-batch-size 256 \\
    --loader-num-workers 16 \\
    --model-tag resnet50-imagenet-pruned85_quant-none-vnni-eval"""
SEED_000 = f"""python scripts/pytorch_vision.py train \\
    --recipe-path zoo:{STUB_MODERATE}?recipe_type=transfer_learn \\
    --checkpoint-path zoo \\
    --arch-key resnet50 \\
    --model-kwargs '{{"ignore_error_tensors": ["classifier.fc.weight", "classifier.fc.bias"]}}' \\
    --dataset imagefolder \\
    --dataset-path /PATH/TO/IMAGEFOLDER/DATASET  \\
    --train-batch-size 32 --test-batch-size 64 \\
    --loader-num-workers 8 \\
    --optim Adam \\
    --optim-args '{{}}' \\
    --model-tag resnet50-imagenette-pruned_quant-transfer_learned"""

# The AC/DC recipe of seed 003, shortened: 4 epochs, AC/DC over 1-3, QAT from 3.
SHORT_ACDC = {"num_epochs": 4, "lr_warmup_epochs": 1, "quantization_epochs": 1, "quantization_keep_bn_epochs": 0,
              "pruning_update_frequency": 1}
TRANSFER_RECIPE = """
num_epochs: 10
quantization_start_epoch: 8
modifiers:
  - !EpochRangeModifier
    end_epoch: eval(num_epochs)
  - !ConstantPruningModifier
    params: __ALL_PRUNABLE__
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
    lr_func: linear
    init_lr: 0.0001
    final_lr: 0.00001
  - !QuantizationModifier
    start_epoch: eval(quantization_start_epoch)
    submodules: [input, sections]
"""


def command(text, **paths):
    """`python -m utils.sparseml` words for a seed's command line, the placeholders replaced."""
    for placeholder, path in paths.items():
        text = text.replace(placeholder, str(path))
    words = shlex.split(text.replace("\\\n", " "))
    if words[0] == "python":          # python scripts/pytorch_vision.py train ...
        return ["pytorch_vision", "train", *words[3:]]
    return ["image_classification.train", *words[1:]]     # sparseml.image_classification.train ...


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    """The zoo's files, made once: a dense ResNet-50 and the moderate stub's SparseML-layout file."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    save_native_checkpoint(root / "resnet50_dense.pt", build_model("resnet50", num_classes=1000), arch="resnet50",
                           arch_kwargs={})
    moderate = sml.ResNet50(num_classes=1000)
    sml.randomize_(moderate, sparsity=0.8, seed=0)
    sml.save_sparseml_container(root / "model.pth", moderate, arch_key="resnet50", recipe=None)
    (root / "recipe_transfer_learn.yaml").write_text(TRANSFER_RECIPE)
    return root, moderate


@pytest.fixture
def zoo(tmp_path, monkeypatch, zoo_files):
    """A temporary zoo: a dense ResNet-50 (--pretrained True), the 85% stub with the seed's AC/DC recipe (its
    model: what the training command writes) and the moderate stub (a SparseML-layout file) with a transfer
    recipe. Runs in tmp_path/work (SparseML's --save-dir default is relative)."""
    root, moderate = zoo_files
    trained = tmp_path / "work" / "pytorch_vision" / "resnet50-imagenet-pruned85_quant-none-vnni" / "model.pt"
    entries = [
        {"name": "resnet50_dense", "path": str(root / "resnet50_dense.pt"), "arch": "resnet50", "sparsity": 0.0},
        {"name": "pruned85", "stub": f"zoo:{STUB_85}", "path": str(trained), "arch": "resnet50", "sparsity": 0.85,
         "recipes": {"original": str(RECIPE_DIR / "acdc_resnet50_imagenet_pruned85_quant.md")}},
        {"name": "moderate", "stub": f"zoo:{STUB_MODERATE}", "path": str(root / "model.pth"), "arch": "resnet50",
         "sparsity": 0.8, "recipes": {"transfer_learn": str(root / "recipe_transfer_learn.yaml")}},
    ]
    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump({"models": entries}))
    monkeypatch.setenv(ZOO_ENV, str(zoo_file))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return moderate


def tiny_imagenet(root):
    """ImageNet's layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    for c, wnid in enumerate(["n01440764", "n01443537"]):
        for i in range(2):
            write_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", size=(40, 32), seed=c * 10 + i)
        write_image(root / "val" / wnid / f"ILSVRC2012_val_{c}.JPEG", size=(40, 32), seed=100 + c)
    return root


def test_seed_003_train_then_eval_run_as_pasted(tmp_path, zoo, one_torch_thread):
    imagenet = tiny_imagenet(tmp_path / "imagenet")
    record = main(command(SEED_003_TRAIN, **{"/PATH/TO/IMAGENET": imagenet})
                  + ["--recipe_args", json.dumps(SHORT_ACDC)])
    run_dir = tmp_path / "work" / "pytorch_vision" / "resnet50-imagenet-pruned85_quant-none-vnni"
    assert Path(record["run_dir"]).resolve() == run_dir.resolve()
    assert record["epochs"] == 4 and record["model"] == "AC/DC"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["optimizer"] | {"lr": 0} == {**config["trainer"]["optimizer"], "name": "sgd",
                                                          "momentum": 0.9, "nesterov": True, "weight_decay": 0.0001,
                                                          "lr": 0}
    assert config["options"]["batch_size"] == 256
    assert config["options"]["workers"] == min(16, os.cpu_count())      # no more loader processes than CPUs
    loaded = load_checkpoint(run_dir / "model.pt", keep_classifier=True)
    recipe_params = [p for p in (RECIPE_DIR / "acdc_resnet50_imagenet_pruned85_quant.md").read_text().split()
                     if p.startswith("sections.")]
    sparsity = loaded.report.layer_sparsity()
    pruned = {n for n, s in sparsity.items() if s > 0.5}
    assert len(pruned) == len(set(recipe_params)) and all(abs(sparsity[n] - 0.85) < 0.01 for n in pruned)
    assert loaded.extra["quantization"]["modules"]
    result = main(command(SEED_003_EVAL, **{"/PATH/TO/IMAGENET": imagenet}))
    assert result["val_acc"] == pytest.approx(record["val_acc"])


def test_seed_000_pytorch_vision_transfer_runs_as_pasted(tmp_path, zoo, one_torch_thread):
    folder = tmp_path / "folder"
    make_folders(folder, test_name="val")
    record = main(command(SEED_000, **{"/PATH/TO/IMAGEFOLDER/DATASET": folder})
                  + ["--recipe_args", '{"num_epochs": 2, "quantization_start_epoch": 1}'])
    run_dir = tmp_path / "work" / "pytorch_vision" / "resnet50-imagenette-pruned_quant-transfer_learned"
    assert Path(record["run_dir"]).resolve() == run_dir.resolve()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["optimizer"]["name"] == "adam" and config["trainer"]["optimizer"]["weight_decay"] == 0
    assert config["trainer"]["batch_size"] == 32 and config["trainer"]["test_batch_size"] == 64
    assert config["checkpoint"]["flavour"] == "sparseml_resnet50"
    loaded = load_checkpoint(run_dir / "model.pt", keep_classifier=True)
    theirs = dict(zoo.named_parameters())
    ours = dict(loaded.model.named_parameters())
    # every zero of the upstream's backbone is still zero, and nothing else became zero
    assert ours["layer1.0.conv1.weight"].eq(0).equal(theirs["sections.0.0.conv1.weight"].eq(0))
    assert ours["layer4.2.conv3.weight"].eq(0).equal(theirs["sections.3.2.conv3.weight"].eq(0))
    assert loaded.report.zeros_outside_mask == 0 and record["measured_sparsity"] > 0.75


@pytest.mark.parametrize("extra, message", [
    (["--gradient-accum-steps", "0"], "--gradient-accum-steps 0: give 1 (no accumulation) or more"),
    (["--image-size", "4"], "--image-size 4: Input should be greater than or equal to 8"),
    (["--optim", "RMSprop"], "--optim 'RMSprop': supported here: SGD, Adam, AdamW"),
    (["--optim-args", '{"lr_decay": 1}'], "--optim-args ['lr_decay']: not supported for SGD"),
    (["--model-kwargs", '{"ignore_error_tensors": ["sections.0.0.conv1.weight"]}'], "only the classifier"),
    (["--arch-key", "efficientnet_b0"], "--arch-key 'efficientnet_b0': not an architecture"),
    (["--dataset", "coco"], "--dataset 'coco': supported here"),
    (["--recipe-path", "zoo:cv/classification/unknown/stub?recipe_type=original"],
     "zoo:cv/classification/unknown/stub is not in the local zoo"),
    (["--pretrained", "True", "--arch-key", "mobilenet"], "--pretrained True: no dense mobilenet in the local zoo"),
])
def test_what_cannot_be_honoured_is_one_line(tmp_path, zoo, capsys, extra, message):
    imagenet = tiny_imagenet(tmp_path / "imagenet")
    with pytest.raises(SystemExit) as exit_info:
        main(command(SEED_003_TRAIN, **{"/PATH/TO/IMAGENET": imagenet}) + extra)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)


def test_the_equivalent_main_py_command_is_shown(tmp_path, zoo):
    from utils.sparseml import main_py_command, translate

    imagenet = tiny_imagenet(tmp_path / "imagenet")
    opts = translate(command(SEED_003_TRAIN, **{"/PATH/TO/IMAGENET": imagenet})[1:] + ["--gradient-accum-steps", "4"],
                     prog="sparseml.image_classification.train")
    line = main_py_command(opts)
    assert "--dset imagefolder" in line and f"--dset_path {imagenet}" in line and "--batch_size 256" in line
    assert opts.accumulate_steps == 4 and "--accumulate_steps 4" in line
    assert "--recipe " + str(RECIPE_DIR / "acdc_resnet50_imagenet_pruned85_quant.md") in line


@pytest.mark.parametrize("words", [["image_classification.export_onnx"], ["pytorch_vision", "export"]])
def test_the_export_commands_write_checked_onnx(tmp_path, make_sparse_checkpoint, capsys, words):
    ckpt = tmp_path / "runs" / "r1" / "model.pt"
    ckpt.parent.mkdir(parents=True)
    make_sparse_checkpoint(ckpt, sparsity=0.7, num_classes=4)
    report = main([*words, "--arch-key", "resnet50", "--checkpoint-path", str(ckpt), "--dataset", "imagenet",
                   "--save-dir", str(tmp_path / "pv"), "--num-samples", "8"])
    assert report["fp32"]["top1_agreement"] == 1.0 and report["fp32"]["num_samples"] == 8
    assert (tmp_path / "pv" / "r1" / "model_fp32.onnx").is_file()          # SAVE_DIR/TAG: the run's folder
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    for extra, message in ((["--onnx-opset", "11"], "--onnx-opset 11: the ONNX files are written in opset 17"),
                           (["--no-convert-qat"], "--no-convert-qat: a quantization-aware-trained model")):
        with pytest.raises(SystemExit):
            main([*words, "--checkpoint-path", str(ckpt), *extra])
        assert message in capsys.readouterr().err

"""ONNX export (fp32 and INT8 QDQ) checked against torch in ONNX Runtime; compressed checkpoint size;
and the whole path through main.py --recipe (sparse transfer + QAT) to `python -m utils.deploy`."""
import csv
from collections import Counter

import onnx
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import main
from models import build_model
from policies.base import TrainState
from policies.loggers import CheckpointSaver
from policies.manager import Manager
from policies.modifiers import build_recipe_policies
from policies.recipe.load import load_recipe_text
from policies.trainer import OptimizerConfig, build_optimizer
from utils import deploy as export
from utils.deploy.__main__ import main as export_main
from utils.errors import UserError
from utils.sparsity import magnitude_prune_

QAT_RECIPE = """
num_epochs: 3
training_modifiers:
  - !EpochRangeModifier
    end_epoch: eval(num_epochs)
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
    lr_func: cosine
    init_lr: 0.05
    final_lr: 0.001
pruning_modifiers:
  - !ConstantPruningModifier
    params: __ALL_PRUNABLE__
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 1
    disable_quantization_observer_epoch: 2
    freeze_bn_stats_epoch: 2
"""


def blobs(n, *, size=16, seed=0):
    """Class-dependent mean images plus noise: a learnable 4-class problem."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centers = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(99))
    return centers[y] + 0.5 * torch.randn(n, 3, size, size, generator=g), y


def test_fp32_export_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=10).eval()
    path = export.export_onnx(model, tmp_path / "m.onnx", input_size=16)
    result = export.compare_with_torch(model, path, torch.randn(20, 3, 16, 16))
    assert result["max_abs_diff"] < 1e-4 and result["top1_agreement"] == 1.0


def test_qat_model_trains_exports_int8_and_onnx_runtime_agrees(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=4)
    magnitude_prune_(model, 0.7)
    x, y = blobs(96)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator())
    optimizer = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.05, momentum=0.9))
    policies, epochs = build_recipe_policies(load_recipe_text(QAT_RECIPE), model=model, steps_per_epoch=len(loader))
    state = TrainState(model=model, forward_model=model, optimizer=optimizer, device=torch.device("cpu"),
                       steps_per_epoch=len(loader), num_epochs=epochs, seed=0)
    metrics = Manager(state=state, policies=policies, train_loader=loader, test_loader=loader).fit()
    assert metrics["test_acc"] > 0.5, "the QAT model learns"

    path = export.export_onnx(model, tmp_path / "int8.onnx", input_size=16)
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    int8_weights = [i for i in onnx.load(str(path)).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 8, "weights are stored as int8 initializers"
    samples, _ = blobs(300, seed=1)
    result = export.compare_with_torch(model, path, samples)
    assert result["top1_agreement"] >= 0.99, result
    # ONNX Runtime turns the QDQ pairs into integer kernels.
    optimized = tmp_path / "opt.onnx"
    options = __import__("onnxruntime").SessionOptions()
    options.optimized_model_filepath = str(optimized)
    __import__("onnxruntime").InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert any(n.op_type == "QLinearConv" for n in onnx.load(str(optimized)).graph.node)


def test_compressed_state_dict_round_trips_bit_for_bit_and_is_smaller():
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=10)
    magnitude_prune_(model, 0.9)
    sd = model.state_dict()
    payload = export.compress_state_dict(sd)
    restored = export.decompress_state_dict(payload)
    assert restored.keys() == sd.keys()
    assert all(torch.equal(restored[k], sd[k]) for k in sd)
    report = export.compressed_size_report(sd)
    assert report["ratio"] > 3 and report["sparse_tensors"] > 5
    with pytest.raises(UserError, match="not a bitmask"):
        export.decompress_state_dict({"format": "x"})


TRAINER = """
epochs: 99
batch_size: 16
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
"""


def test_main_with_a_sparse_transfer_qat_recipe_resume_then_export(tmp_path, capsys, monkeypatch, sparse_checkpoint,
                                                                   trainer_config):
    ckpt, masks = sparse_checkpoint
    trainer_config(TRAINER)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(QAT_RECIPE)
    args = ["--dset", "synthetic", "--config_path", str(tmp_path / "trainer.yaml"), "--from_checkpoint_path",
            str(ckpt), "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress",
            "--image_size", "16", "--recipe", str(recipe), "--exp_name", "st"]
    original = CheckpointSaver.on_epoch_end

    def save_then_die_in_qat(self, state):
        original(self, state)
        if state.epoch == 1:            # QAT began at epoch 1; its observers are still running
            raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(CheckpointSaver, "on_epoch_end", save_then_die_in_qat)
        with pytest.raises(KeyboardInterrupt):
            main.main(args + ["--recipe_args", "num_epochs=3"])
    run_dir = tmp_path / "exp" / "st"
    assert (run_dir / "recipe.yaml").read_text().startswith("num_epochs: 3\n")
    with pytest.raises(SystemExit):   # resuming with different recipe arguments is refused
        main.main(args + ["--recipe_args", "num_epochs=2", "--resume"])
    assert "evaluates differently" in capsys.readouterr().err

    result = main.main(args + ["--recipe_args", "num_epochs=3", "--resume"])
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3, "the recipe sets the epochs"
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    for name, mask in masks.items():
        assert torch.equal(saved["state_dict"][name] == 0, ~mask), name
    assert saved["extra"]["quantization"]["modules"], "QAT parameters travel with the model"
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ck["policies"]["recipe"]["yaml"] == (run_dir / "recipe.yaml").read_text()
    row = next(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert row["recipe"] == str(recipe) and row["epochs"] == "3" and result["measured_sparsity"] > 0.79
    with pytest.raises(SystemExit):
        main.main(args[:-1] + ["other", "--epochs", "3"])
    assert "--epochs cannot be combined with --recipe" in capsys.readouterr().err

    report = export_main([str(run_dir / "model.pt"), "--num_samples", "32"])
    assert report["input_size"] == 16, "exported at the size the run trained at, not the architecture's default"
    assert report["fp32"]["top1_agreement"] == 1.0
    assert report["int8"]["top1_agreement"] >= 0.9 and report["int8"]["quantized_modules"] > 5
    assert report["size"]["compressed_bytes"] < report["size"]["dense_bytes"]
    assert (run_dir / "model_export" / "model_int8.onnx").exists()
    assert "top-1 agreement" in capsys.readouterr().out

    # the sparse engine runs the INT8 file itself (int8, fp32 sparse or dense per layer), as near torch as ORT
    report = export_main([str(run_dir / "model.pt"), "--num_samples", "32", "--engine", "sparse", "--latency"])
    assert report["int8"]["engines"]["sparse"]["top1_agreement"] >= min(0.9, report["int8"]["top1_agreement"])
    ways = report["sparse_layers_int8"]["ways"]
    assert set(ways) <= {"int8", "sparse", "dense"} and sum(ways.values()) == report["sparse_layers_int8"][
        "weight_layers"] > 5
    assert "sparse engine, INT8 file: of " in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--num_samples", "0"], "--num_samples 0: compare on at least 1 input"),
    (["--image_size", "0"], "--image_size 0: at least 8 px"),
    (["--out", "FILE"], "is a file; the export writes a folder"),
])
def test_export_flags_it_cannot_mean_are_one_line(tmp_path, capsys, sparse_checkpoint, flags, message):
    from utils.deploy.__main__ import main as deploy_main
    ckpt, _ = sparse_checkpoint
    (tmp_path / "FILE").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        deploy_main([str(ckpt), *[str(tmp_path / f) if f == "FILE" else f for f in flags]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_a_runs_training_state_points_to_its_model(tmp_path, capsys, sparse_checkpoint, trainer_config):
    import main
    from utils.deploy.__main__ import main as deploy_main
    ckpt, _ = sparse_checkpoint
    trainer = trainer_config("epochs: 1\nbatch_size: 16\noptimizer: {name: sgd, lr: 0.05}\n")
    main.main(["--dset", "synthetic", "--config_path", str(trainer), "--from_checkpoint_path", str(ckpt),
               "--experiment_root_path", str(tmp_path / "exp"), "--exp_name", "r", "--workers", "0",
               "--no_progress", "--image_size", "16"])
    with pytest.raises(SystemExit):
        deploy_main([str(tmp_path / "exp" / "r" / "checkpoint.pt")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training state" in err and str(tmp_path / "exp" / "r" / "model.pt") in err


def test_a_sparse_model_exports_and_runs_end_to_end_in_the_sparse_engine(tmp_path, capsys, make_sparse_checkpoint):
    import json

    from utils.deploy.__main__ import main as deploy_main
    make_sparse_checkpoint(tmp_path / "up.pt", sparsity=0.9)
    deploy_main([str(tmp_path / "up.pt"), "--engine", "sparse", "--latency", "--image_size", "32", "--out",
                 str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "sparse: max |diff|" in out and "top-1 agreement 100.00%" in out.split("sparse: max |diff|")[1]
    assert "sparse, batch 1, 32 px: fp32" in out and "layers (convolutions and linear) run sparse" in out
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert report["fp32"]["engines"]["sparse"]["max_abs_diff"] < 1e-3
    rows = report["sparse_layers"]["layers"]
    assert report["sparse_layers"]["weight_layers"] == 10 == len(rows)              # 9 convolutions, the classifier
    assert [r["kind"] for r in rows].count("linear") == 1
    with pytest.raises(SystemExit):
        deploy_main([str(tmp_path / "up.pt"), "--engine", "tensorrt"])
    assert "--engine tensorrt: unknown" in capsys.readouterr().err

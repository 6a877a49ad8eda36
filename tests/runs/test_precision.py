"""--precision bf16 / --channels_last: masks exact after every step, loss finite, accuracy near fp32's, the
precision recorded; --fp16 is the study's spelling of --precision fp16."""
import csv
import json

import pytest
import torch

import main
from utils.runs import FullOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAINER = """
epochs: 3
batch_size: 16
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
schedule: {name: cosine}
"""


def run(tmp_path, ckpt, trainer, name, *extra):
    return main.main(["--dset", "synthetic", "--config_path", str(trainer), "--from_checkpoint_path", str(ckpt),
                      "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress",
                      "--image_size", "16", "--manual_seed", "2", "--exp_name", name, *extra])


def test_bf16_and_channels_last_keep_every_mask_and_reach_fp32_accuracy(tmp_path, sparse_checkpoint, trainer_config):
    ckpt, masks = sparse_checkpoint
    trainer = trainer_config(TRAINER)
    fp32 = run(tmp_path, ckpt, trainer, "fp32")
    bf16 = run(tmp_path, ckpt, trainer, "bf16", "--precision", "bf16", "--channels_last")
    saved = torch.load(tmp_path / "exp" / "bf16" / "model.pt", weights_only=True)
    for name, mask in masks.items():
        weight = saved["state_dict"][name]
        assert weight.dtype == torch.float32                    # fp32 master weights
        assert torch.equal(weight != 0, mask), name             # zeros exactly where the mask is
    epochs = [json.loads(line) for line in (tmp_path / "exp" / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in epochs)
    assert abs(bf16["val_acc"] - fp32["val_acc"]) <= 0.1     # stated tolerance: 10 points on this 32-image test split
    rows = {r["run_dir"].rsplit("/", 1)[-1]: r for r in csv.DictReader((tmp_path / "exp" / "results.csv").open())}
    assert rows["bf16"]["precision"] == "bf16" and rows["fp32"]["precision"] == "fp32"


def test_fp16_flag_is_precision_fp16_and_contradictions_are_refused():
    base = dict(dataset="synthetic", trainer_config_path="t.yaml")
    assert FullOptions(**base, fp16=True).precision == "fp16"
    assert FullOptions(**base, precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="--fp16 contradicts --precision bf16"):
        FullOptions(**base, fp16=True, precision="bf16")


def test_a_qat_recipe_runs_under_bf16_with_fp32_fake_quantization(tmp_path, sparse_checkpoint, trainer_config):
    from utils.paths import RECIPE_DIR

    ckpt, masks = sparse_checkpoint
    record = run(tmp_path, ckpt, trainer_config(TRAINER), "qat_bf16", "--precision", "bf16", "--recipe",
                 str(RECIPE_DIR / "demo_sparse_transfer.yaml"), "--recipe_args", '{"num_epochs": 3}')
    saved = torch.load(tmp_path / "exp" / "qat_bf16" / "model.pt", weights_only=True)
    assert saved["extra"]["quantization"]["modules"] and record["precision"] == "bf16"
    for name, mask in masks.items():
        assert torch.equal(saved["state_dict"][name] != 0, mask), name


def test_auto_precision_picks_what_the_probe_finds_faster(monkeypatch):
    import utils.runs.training as full
    from policies.tasks import fastest_precision

    assert fastest_precision(torch.device("cpu")) in ("fp32", "bf16")
    monkeypatch.setattr(full, "_PROBED", {})
    monkeypatch.setattr(full, "fastest_precision", lambda device: "bf16")
    assert full.run_precision("auto", torch.device("cpu")) == "bf16"
    assert full.run_precision("fp32", torch.device("cpu")) == "fp32"


def test_a_compiled_model_trains_to_the_eager_result_and_keeps_its_masks():
    """torch.compile through the Manager: the same losses and weights as eager (to float tolerance), masks exact."""
    from torch.utils.data import DataLoader, TensorDataset

    from policies.base import TrainState
    from policies.manager import Manager
    from policies.masking import FixedMaskPolicy

    def train(compiled: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
        with torch.no_grad():     # scattered zeros (whole zero channels would meet relu'(0), where kernels differ)
            model[0].weight[torch.rand(model[0].weight.shape, generator=torch.Generator().manual_seed(1)) < 0.5] = 0
        masks = {"0.weight": model[0].weight.detach() != 0}
        data = TensorDataset(torch.randn(32, 3, 8, 8), torch.randint(0, 3, (32,)))
        loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        state = TrainState(model=model, forward_model=torch.compile(model) if compiled else model,
                           optimizer=optimizer, device=torch.device("cpu"), steps_per_epoch=len(loader), num_epochs=2,
                           seed=0)
        metrics = Manager(state=state, policies=[FixedMaskPolicy(masks)], train_loader=loader,
                          test_loader=DataLoader(data, batch_size=16)).fit()
        return model, masks, metrics

    eager, masks, eager_metrics = train(False)
    compiled, _, compiled_metrics = train(True)
    assert torch.equal(compiled[0].weight != 0, masks["0.weight"])
    theirs = compiled.state_dict()
    for key, a in eager.state_dict().items():
        torch.testing.assert_close(a.float(), theirs[key].float(), rtol=1e-3, atol=1e-3, msg=key)
    assert compiled_metrics["train_loss"] == pytest.approx(eager_metrics["train_loss"], rel=1e-3)

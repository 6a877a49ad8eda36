"""SparseML / SparseZoo model files (SparseML's own ResNet and MobileNet classes) load into our models."""
import pytest
import torch

from tests.checkpoints import sparseml_layout as sml
from utils.checkpoints import load_checkpoint
from utils.errors import UserError

RECIPE = """version: 1.1.0

modifiers:
    - !EpochRangeModifier
        end_epoch: 2
        start_epoch: 0.0

    - !ConstantPruningModifier
        end_epoch: -1.0
        log_types: __ALL__
        params: __ALL_PRUNABLE__
        start_epoch: 0.0
        update_frequency: -1
"""


def fixture(tmp_path, kind, *, container=True, dropout=None, seed=0):
    model = sml.ResNet50(num_classes=10) if kind == "resnet50" else sml.MobileNet(num_classes=10, dropout=dropout)
    sml.randomize_(model, sparsity=0.8, seed=seed)
    model.eval()
    path = tmp_path / f"{kind}.pth"
    if container:
        sml.save_sparseml_container(path, model, arch_key=kind, recipe=RECIPE)
    else:
        torch.save(model.state_dict(), path)
    return model, path


def zeros_of(model):
    convs = {n: p for n, p in model.named_parameters() if p.ndim > 1}
    return sum(int((p == 0).sum()) for p in convs.values()), sum(p.numel() for p in convs.values())


@pytest.mark.parametrize("kind, flavour", [("resnet50", "sparseml_resnet50"), ("mobilenet", "sparseml_mobilenet")])
@pytest.mark.parametrize("container", [True, False], ids=["save_model", "state_dict"])
def test_a_sparseml_file_loads_with_its_sparsity_and_logits(tmp_path, kind, flavour, container, one_torch_thread):
    reference, path = fixture(tmp_path, kind, container=container)
    loaded = load_checkpoint(path, keep_classifier=True)           # auto-detected, strict keys
    assert loaded.flavour.name == flavour and loaded.detected
    assert loaded.report.zeros_outside_mask == 0
    zeros, total = zeros_of(reference)
    assert zeros_of(loaded.model) == (zeros, total) and zeros / total > 0.7
    assert sum(int((~m).sum()) for m in loaded.masks.values()) == zeros   # every zero is a masked weight
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, _ = reference(x)
        ours = loaded.model.eval()(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert loaded.recipe == (RECIPE if container else None)


def test_a_mobilenet_trained_with_dropout_keeps_its_classifier(tmp_path, one_torch_thread):
    reference, path = fixture(tmp_path, "mobilenet", dropout=0.2)
    loaded = load_checkpoint(path, flavour="sparseml_mobilenet", keep_classifier=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), reference(x)[0], rtol=1e-4, atol=1e-4)


def test_the_head_is_replaced_for_transfer_and_the_zeros_stay(tmp_path, one_torch_thread):
    reference, path = fixture(tmp_path, "resnet50")
    loaded = load_checkpoint(path, num_classes=3)
    assert loaded.num_classes == 3 and not loaded.classifier_loaded
    assert zeros_of(loaded.model)[0] >= zeros_of(reference)[0] - reference.classifier.fc.weight.eq(0).sum()


def test_a_sparseml_quantized_file_is_named_not_half_loaded(tmp_path):
    _, path = fixture(tmp_path, "mobilenet", container=False)
    state = torch.load(path, weights_only=True)
    state["sections.0.0.depth.conv.weight_fake_quant.scale"] = torch.ones(1)
    torch.save(state, path)
    with pytest.raises(UserError, match="unexpected.*weight_fake_quant"):
        load_checkpoint(path, flavour="sparseml_mobilenet")


def test_the_recipe_a_sparseml_file_carries_runs_with_recipe_checkpoint(tmp_path, trainer_config, caplog,
                                                                        one_torch_thread):
    import main
    from utils.sparsity import measured_sparsity

    reference, path = fixture(tmp_path, "resnet50")
    trainer = trainer_config("epochs: 1\nbatch_size: 16\noptimizer: {name: sgd, lr: 0.01}\n")
    args = ["--dset", "synthetic", "--config_path", str(trainer), "--from_checkpoint_path", str(path),
            "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress", "--image_size", "32",
            "--max_train_samples", "16"]
    with caplog.at_level("INFO"):
        main.main(args + ["--exp_name", "trainer", "--epochs", "1"])
    assert "carries the recipe it was trained with; run it with --recipe checkpoint" in caplog.text
    result = main.main(args + ["--exp_name", "own", "--recipe", "checkpoint"])
    assert result["epochs"] == 2 and (tmp_path / "exp" / "own" / "recipe.yaml").is_file()
    zeros, total = zeros_of(reference)
    head = reference.classifier.fc.weight
    kept = (zeros - int((head == 0).sum())) / (total - head.numel())
    assert result["measured_sparsity"] == pytest.approx(kept, abs=1e-9)
    assert measured_sparsity(load_checkpoint(tmp_path / "exp" / "own" / "model.pt").model) == pytest.approx(kept)


def test_recipe_checkpoint_without_a_recipe_in_the_file_is_one_line(tmp_path, trainer_config, capsys):
    import main

    _, path = fixture(tmp_path, "mobilenet", container=False)
    trainer = trainer_config("epochs: 1\nbatch_size: 16\noptimizer: {name: sgd, lr: 0.01}\n")
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--dset", "synthetic", "--config_path", str(trainer), "--from_checkpoint_path", str(path),
                   "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress",
                   "--recipe", "checkpoint"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --recipe checkpoint:") and "carries no recipe" in err[-1]

"""timm and torchvision architectures by name (issue 29): built tiny from their configs with random weights
(nothing downloads), given the project's model interface, and taken through the study's protocols: full
fine-tuning with masks kept bit for bit, a GMP recipe on a ViT's Linear layers, a linear probe on cached
features, export with the agreement check."""
import csv
import json
import re

import numpy as np
import pytest
import torch
import yaml

import finetune_pre_extracted_features as linear_entry
import main
from models import MODELS, build_model, head_key_patterns, model_task
from utils.checkpoints import load_checkpoint, save_native_checkpoint
from utils.checkpoints.__main__ import main as checkpoints_cli
from utils.deploy import export_checkpoint, export_onnx
from utils.errors import UserError
from utils.sparsity import magnitude_prune_, prunable_parameters

# Tiny versions of today's families: (architecture, model arguments, input size).
TINY = {
    "vit": ("timm:vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}, 32),
    "deit-distilled": ("timm:deit_tiny_distilled_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1}, 32),
    "convnext": ("timm:convnext_atto", {"depths": [1, 1, 1, 1]}, 32),
    "efficientnet": ("timm:efficientnet_b0", {}, 32),
    "swin": ("timm:swin_tiny_patch4_window7_224",
             {"img_size": 32, "window_size": 2, "depths": [1, 1, 1, 1], "embed_dim": 24, "num_heads": [1, 1, 1, 1]},
             32),
    "tv-convnext": ("tv:convnext_tiny", {"stochastic_depth_prob": 0.0}, 32),
    # a pre-logits layer between pooling and classifier: what the classifier reads is its output
    "mobilenetv3": ("timm:mobilenetv3_small_050", {}, 32),
}

TRAINER = """
epochs: 1
batch_size: 8
optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0.0005}
schedule: {name: step, milestones_epochs: [1]}
"""


@pytest.mark.parametrize("family", sorted(TINY))
def test_each_family_builds_with_the_project_interface(family, one_torch_thread):
    arch, args, size = TINY[family]
    model = build_model(arch, num_classes=5, **args).eval()
    x = torch.randn(2, 3, size, size)
    assert model_task(arch) == "classification"
    assert model.pooled_features(x).shape == (2, model.feature_dim)      # what the classifier reads
    model.reset_classifier(3)
    logits = model(x)
    assert (logits[0] if isinstance(logits, tuple) else logits).shape == (2, 3)
    assert model.get_classifier().out_features == 3
    assert model.classifier_name in dict(model.named_modules())
    head = model.classifier_name + "."
    prunable = prunable_parameters(model, exclude_prefixes=[model.classifier_name])
    assert prunable and not [n for n in prunable if n.startswith(head)]
    assert any(re.search(p, head + "weight") for p in head_key_patterns(model))     # a transfer replaces it
    assert model.input_config["interpolation"] in ("bilinear", "bicubic")
    assert len(model.input_config["normalization"]["mean"]) == 3


def test_a_vit_built_small_knows_its_size_and_its_prunable_layers(one_torch_thread):
    """The patch embedding fixes a ViT's input size; its prunable layers are the patch embedding (a conv) and the
    Linear layers of its blocks (qkv, proj, fc1, fc2), the head excluded as the study excludes the classifier."""
    model = build_model("timm:vit_tiny_patch16_224", num_classes=4, img_size=32, patch_size=8, depth=2)
    assert model.default_input_size == 32 and model.input_config["interpolation"] == "bicubic"
    names = set(prunable_parameters(model, exclude_prefixes=[model.classifier_name]))
    layers = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    blocks = {f"blocks.{i}.{layer}.weight" for i in range(2) for layer in layers}
    assert names == blocks | {"patch_embed.proj.weight"}


@pytest.mark.parametrize("name, hint", [("timm:vit_tiny_patch16_22", "timm:vit_tiny_patch16_224"),
                                        ("tv:resnet_18", "tv:resnet18")])
def test_a_typo_gets_did_you_mean_in_one_line(name, hint):
    with pytest.raises(UserError, match="did you mean") as err:
        MODELS.get(name)
    assert hint in str(err.value) and "\n" not in str(err.value) and "--list-archs" in str(err.value)


def test_list_archs_lists_the_projects_timms_and_torchvisions(capsys):
    with pytest.raises(SystemExit) as done:
        main.main(["--list-archs"])
    names = capsys.readouterr().out.split()
    assert done.value.code == 0
    assert {"resnet50", "timm:deit_small_patch16_224", "tv:convnext_tiny"} <= set(names) and len(names) > 1000


def sparse_checkpoint(path, arch, args, *, sparsity=0.5, num_classes=6):
    """A seeded model of `arch`, magnitude-pruned, saved natively (with its pretrained config's input settings)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=num_classes, **args)
    masks = magnitude_prune_(model, sparsity)
    save_native_checkpoint(path, model, arch=arch, arch_kwargs=args, masks=masks,
                           normalization=model.input_config["normalization"],
                           interpolation=model.input_config["interpolation"])
    return masks


def fine_tune(tmp_path, ckpt, trainer, size, *extra):
    return main.main(["--dset", "synthetic", "--config_path", str(trainer), "--from_checkpoint_path", str(ckpt),
                      "--experiment_root_path", str(tmp_path / "exp"), "--workers", "0", "--no_progress",
                      "--image_size", str(size), "--max_train_samples", "16", *extra])


@pytest.mark.parametrize("family", ["vit", "convnext", "swin"])
def test_full_fine_tuning_keeps_the_masks_bit_for_bit(family, tmp_path, trainer_config, one_torch_thread):
    arch, args, size = TINY[family]
    ckpt = tmp_path / "up.pt"
    masks = sparse_checkpoint(ckpt, arch, args)
    result = fine_tune(tmp_path, ckpt, trainer_config(TRAINER), size, "--exp_name", "ft")
    run_dir = tmp_path / "exp" / "ft"
    final = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    for name, mask in masks.items():
        assert torch.equal(final[name] == 0, ~mask), name
    assert result["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    recorded = json.loads((run_dir / "result.json").read_text())
    assert recorded["arch"] == arch and recorded["input"]["interpolation"] == "bicubic"
    assert recorded["input"]["image_size"] == size


GMP = """
num_epochs: 2
final_sparsity: 0.75
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
    lr_func: linear
    init_lr: 0.01
    final_lr: 0.001
pruning_modifiers:
  - !GMPruningModifier
    init_sparsity: 0.05
    final_sparsity: eval(final_sparsity)
    start_epoch: 0
    end_epoch: 1
    update_frequency: 0.5
    params: ['re:blocks\\.\\d+\\.(attn\\.(qkv|proj)|mlp\\.fc\\d)\\.weight']
"""


def test_a_gmp_recipe_prunes_a_vits_linear_layers_and_holds_them(tmp_path, trainer_config, one_torch_thread):
    """CAP's layer set (qkv, proj, fc1, fc2 of every block) through SparseML's `re:` patterns on timm's names; the
    patch embedding and the head stay dense."""
    arch, args, size = TINY["vit"]
    ckpt = tmp_path / "dense.pt"
    torch.manual_seed(0)
    model = build_model(arch, num_classes=6, **args)
    save_native_checkpoint(ckpt, model, arch=arch, arch_kwargs=args)
    recipe = tmp_path / "gmp.yaml"
    recipe.write_text(GMP)
    result = fine_tune(tmp_path, ckpt, trainer_config(TRAINER), size, "--recipe", str(recipe), "--exp_name", "gmp")
    final = torch.load(tmp_path / "exp" / "gmp" / "model.pt", weights_only=True)["state_dict"]
    for i in range(2):
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            weight = final[f"blocks.{i}.{layer}.weight"]
            assert float((weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01), layer
    assert float((final["patch_embed.proj.weight"] == 0).float().mean()) < 0.01
    assert result["measured_sparsity"] > 0.5


def test_a_linear_probe_reads_the_models_own_pooled_features_and_reuses_them(tmp_path, one_torch_thread):
    arch, args, size = TINY["vit"]
    ckpt = tmp_path / "vit.pt"
    sparse_checkpoint(ckpt, arch, args)

    def probe(name):
        return linear_entry.main(["--dataset", "synthetic", "--from_checkpoint_path", str(ckpt), "--workers", "0",
                                  "--features_cache", str(tmp_path / "cache"), "--no_progress",
                                  "--experiment_root_path", str(tmp_path / "exp"), "--image_size", str(size),
                                  "--max_train_samples", "16", "--exp_name", name])

    first, second = probe("first"), probe("second")
    assert 0 <= first["val_acc"] <= 1 and second["val_acc"] == first["val_acc"]
    reused = {name: json.loads((tmp_path / "exp" / name / "result.json").read_text())["features_reused"]
              for name in ("first", "second")}
    assert reused == {"first": {"train": False, "test": False}, "second": {"train": True, "test": True}}
    features = sorted((tmp_path / "cache").rglob("features.npy"))
    assert features and all(f.stat().st_size > 0 for f in features)
    assert np.load(features[0]).shape[1] == 192       # the ViT's CLS-token width, pooled as timm defines


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_export_agrees_with_torch(family, tmp_path, one_torch_thread):
    arch, args, size = TINY[family]
    ckpt = tmp_path / "up.pt"
    sparse_checkpoint(ckpt, arch, args)
    report = export_checkpoint(ckpt, tmp_path / "onnx", image_size=size, num_samples=8, engines=["onnxruntime"])
    assert report["fp32"]["top1_agreement"] == 1.0 and report["fp32"]["max_abs_diff"] < 1e-3


# --- checkpoints as people have them -----------------------------------------------------------------------------

VIT_ARGS = {"img_size": 32, "patch_size": 8, "depth": 2}


def pruned_timm_vit(sparsity=0.5):
    """A seeded timm ViT (timm's own object, as a user's script has it), half its block weights zeroed."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=4, **VIT_ARGS).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks.") and p.dim() == 2:
                p.mul_(p.abs() > p.abs().flatten().kthvalue(int(sparsity * p.numel())).values)
    return model


def saved_as(model, fmt, tmp_path):
    """`model` written the way `fmt` names; the path a user would pass."""
    from safetensors.torch import save_file
    from timm.models import save_for_hf
    if fmt in ("hf-safetensors", "hf-bin"):
        save_for_hf(model, tmp_path / "folder", model_args=VIT_ARGS, safe_serialization=fmt == "hf-safetensors")
        return tmp_path / "folder"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        save_file(state, tmp_path / "model.safetensors")
        return tmp_path / "model.safetensors"
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": state, "epoch": 3} if fmt == "wrapped-pth" else state, path)
    return path


@pytest.mark.parametrize("fmt", ["hf-safetensors", "hf-bin", "safetensors", "pth", "wrapped-pth"])
def test_a_timm_checkpoint_loads_in_every_format_with_its_zeros_as_masks(fmt, tmp_path, one_torch_thread):
    model = pruned_timm_vit()
    path = saved_as(model, fmt, tmp_path)
    if not fmt.startswith("hf"):      # no model folder: a config.json beside the file names the architecture
        (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224",
                                                          "num_classes": 4, "model_args": VIT_ARGS}))
    loaded = load_checkpoint(path, keep_classifier=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(x), model(x), atol=1e-5)
    assert loaded.arch == "timm:vit_tiny_patch16_224"
    assert set(loaded.masks) == {f"blocks.{i}.{layer}.weight" for i in range(2)
                                 for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    for name, mask in loaded.masks.items():
        assert torch.equal(~mask, model.state_dict()[name] == 0), name
    if fmt.startswith("hf"):      # the pretrained config's input settings come along
        assert loaded.interpolation == "bicubic" and loaded.normalization["mean"] == [0.5, 0.5, 0.5]
        assert loaded.input_size == 32


def test_a_file_that_names_no_architecture_says_to_pass_arch(tmp_path):
    path = saved_as(pruned_timm_vit(), "safetensors", tmp_path)
    with pytest.raises(UserError, match="pass --arch") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    plain = saved_as(pruned_timm_vit(), "pth", tmp_path)
    with pytest.raises(UserError, match="pass --arch"):
        load_checkpoint(plain)


def test_a_torchvision_state_dict_loads_with_arch(tmp_path, one_torch_thread):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(num_classes=5).eval()
    torch.save(model.state_dict(), tmp_path / "convnext.pth")
    loaded = load_checkpoint(tmp_path / "convnext.pth", keep_classifier=True, arch="tv:convnext_tiny")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(x), model(x), atol=1e-5)
    assert loaded.model.classifier_name == "classifier.2" and loaded.num_classes == 5


def test_the_checkpoint_command_reports_a_model_folders_sparsity(tmp_path, capsys):
    folder = saved_as(pruned_timm_vit(), "hf-safetensors", tmp_path)
    checkpoints_cli([str(folder)])
    out = capsys.readouterr().out
    assert "blocks.0.attn.qkv.weight" in out and "timm:vit_tiny_patch16_224" in out


def test_fine_tuning_starts_from_a_hugging_face_folder(tmp_path, trainer_config, one_torch_thread):
    model = pruned_timm_vit()
    folder = saved_as(model, "hf-safetensors", tmp_path)
    result = fine_tune(tmp_path, folder, trainer_config(TRAINER), 32, "--exp_name", "hf")
    final = torch.load(tmp_path / "exp" / "hf" / "model.pt", weights_only=True)["state_dict"]
    for name, value in model.state_dict().items():
        if name.startswith("blocks.") and value.dim() == 2:
            assert torch.equal(final[name] == 0, value == 0), name
    assert result["measured_sparsity"] > 0.4


def test_a_linear_probe_on_a_bare_torchvision_state_dict_names_it_with_arch(tmp_path, one_torch_thread):
    import torchvision
    torch.manual_seed(0)
    torch.save(torchvision.models.efficientnet_b0(num_classes=7).state_dict(), tmp_path / "b0.pth")
    result = linear_entry.main(["--dataset", "synthetic", "--from_checkpoint_path", str(tmp_path / "b0.pth"),
                                "--arch", "tv:efficientnet_b0", "--workers", "0",
                                "--features_cache", str(tmp_path / "cache"),
                                "--no_progress", "--experiment_root_path", str(tmp_path / "exp"), "--image_size", "32",
                                "--max_train_samples", "16"])
    recorded = json.loads((tmp_path / "exp" / "synthetic_b0_linear-lbfgs_seed0" / "result.json").read_text())
    assert recorded["arch"] == "tv:efficientnet_b0" and 0 <= result["val_acc"] <= 1
    features = sorted((tmp_path / "cache").rglob("features.npy"))
    assert features and np.load(features[0]).shape[1] == 1280


def test_a_study_takes_a_hugging_face_folder_as_an_upstream(tmp_path, one_torch_thread):
    """configs/studies/vit_transfer.yaml's shape on a tiny ViT folder: full and linear cells, one row each."""
    import sweep
    folder = saved_as(pruned_timm_vit(), "hf-safetensors", tmp_path)
    (tmp_path / "trainer.yaml").write_text(TRAINER)
    study = {"name": "vit", "experiment_root": str(tmp_path / "exp"), "seeds": [1],
             "upstreams": [{"name": "vit_50", "model": "GMP", "sparsity": 0.5, "path": str(folder)}],
             "datasets": [{"name": "synthetic"}], "full": {"trainer_config_path": str(tmp_path / "trainer.yaml")},
             "linear": {"solver": "lbfgs", "options": {"normalization": "checkpoint"}},
             "options": {"image_size": 32, "workers": 0, "max_train_samples": 16}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    counts = sweep.main([str(tmp_path / "study.yaml"), "--no-report", "--jobs", "1"])
    assert counts["done"] == 2 and counts["failed"] == 0
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert sorted(r["finetuning"] for r in rows) == ["full", "linear"]
    assert {r["arch"] for r in rows} == {"timm:vit_tiny_patch16_224"} and {r["model"] for r in rows} == {"GMP"}
    assert {r["flavour"] for r in rows} == {"external"}


BLOCK_LINEAR = r"re:blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc\d)\.weight"


def two_epochs(lr: float) -> str:
    """A recipe's training modifiers: 2 epochs at a constant `lr` (a test adds its pruning or QAT group)."""
    return ("training_modifiers:\n  - !EpochRangeModifier\n    start_epoch: 0\n    end_epoch: 2\n"
            f"  - !SetLearningRateModifier\n    start_epoch: 0\n    learning_rate: {lr}\n")


RECIPE_HEAD = two_epochs(0.01) + "pruning_modifiers:\n"
CAP_SETTINGS = {
    "gmp-block4": ("GMPruningModifier", "    mask_type: block4\n"),
    "gmp-2:4": ("GMPruningModifier", "    mask_type: '2:4'\n"),
    "obs": ("OBSPruningModifier", "    num_grads: 4\n    damp: 0.001\n    fisher_block_size: 16\n"),
    "mfac": ("MFACPruningModifier", "    num_grads: 4\n    damp: 0.001\n    fisher_block_size: 16\n"),
    "acdc": ("ACDCPruningModifier", None),
}


@pytest.mark.parametrize("setting", sorted(CAP_SETTINGS))
def test_recipes_prune_a_vits_linear_layers_with_each_mask_and_method(setting, tmp_path, trainer_config,
                                                                      one_torch_thread):
    """GMP with block-4 and 2:4 masks, OBS and M-FAC (second order), AC/DC: on the block Linear layers of a ViT, by
    SparseML's `re:` patterns on timm's names, to 50%, through main.py; the masks' structure checked."""
    arch, args, size = TINY["vit"]
    torch.manual_seed(0)
    model = build_model(arch, num_classes=6, **args)
    save_native_checkpoint(tmp_path / "dense.pt", model, arch=arch, arch_kwargs=args)
    name, extra = CAP_SETTINGS[setting]
    if name == "ACDCPruningModifier":
        body = (f"  - !ACDCPruningModifier\n    compression_sparsity: 0.5\n    start_epoch: 0\n    end_epoch: 2\n"
                f"    update_frequency: 1\n    params: ['{BLOCK_LINEAR}']\n")
    else:
        body = (f"  - !{name}\n    init_sparsity: 0.5\n    final_sparsity: 0.5\n    start_epoch: 0\n    end_epoch: 1\n"
                f"    update_frequency: 1\n    params: ['{BLOCK_LINEAR}']\n{extra}")
    (tmp_path / "recipe.yaml").write_text(RECIPE_HEAD + body)
    fine_tune(tmp_path, tmp_path / "dense.pt", trainer_config(TRAINER), size, "--recipe", str(tmp_path / "recipe.yaml"),
              "--exp_name", "r")
    final = torch.load(tmp_path / "exp" / "r" / "model.pt", weights_only=True)["state_dict"]
    zeros = [final[f"blocks.{i}.{layer}.weight"] == 0 for i in range(2)
             for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    overall = sum(int(z.sum()) for z in zeros) / sum(z.numel() for z in zeros)   # global methods vary per layer
    assert overall == pytest.approx(0.5, abs=0.01), setting
    for zero in zeros:
        groups = zero.reshape(zero.shape[0], -1, 4)          # 4 neighbouring inputs of one output
        if setting == "gmp-block4":
            assert bool((groups.all(-1) | ~groups.any(-1)).all())        # whole blocks of 4
        if setting == "gmp-2:4":
            assert bool((groups.sum(-1) == 2).all())                      # 2 of every 4
    assert float((final["patch_embed.proj.weight"] == 0).float().mean()) < 0.01


QAT = two_epochs(0.001) + """quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 0
    disable_quantization_observer_epoch: 1
    freeze_bn_stats_epoch: 1
"""


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_quantization_aware_training_exports_int8_that_agrees(family, tmp_path, trainer_config, one_torch_thread):
    """A QAT recipe on a sparse timm model (its Conv and Linear layers get fake quantization), then the INT8 QDQ
    file checked against torch as for the study's models; the zeros survive quantization-aware training."""
    arch, args, size = TINY[family]
    masks = sparse_checkpoint(tmp_path / "up.pt", arch, args)
    (tmp_path / "qat.yaml").write_text(QAT)
    fine_tune(tmp_path, tmp_path / "up.pt", trainer_config(TRAINER), size, "--recipe", str(tmp_path / "qat.yaml"),
              "--exp_name", "q")
    model_pt = tmp_path / "exp" / "q" / "model.pt"
    final = torch.load(model_pt, weights_only=True)["state_dict"]
    for name, mask in masks.items():
        assert torch.equal(final[name] == 0, ~mask), name
    report = export_checkpoint(model_pt, tmp_path / "onnx", image_size=size, num_samples=16, engines=["onnxruntime"])
    assert report["int8"]["quantized_modules"] >= 5 and report["int8"]["bytes"] < report["fp32"]["bytes"]
    assert report["int8"]["top1_agreement"] >= 0.75        # INT8 vs fp32 top-1 of a random tiny net


@pytest.mark.parametrize("family", ["vit", "swin", "deit-distilled"])
def test_the_sparse_engine_runs_a_transformer_with_its_linear_layers_sparse(family, tmp_path):
    """A transformer's graph runs in the sparse engine itself (its shape arithmetic, attention, LayerNorm, GELU as
    torch operators), and every Linear layer of its blocks -- a MatMul by a constant weight in ONNX -- is a sparse
    linear layer; forced sparse, forced dense and calibrated, it equals ONNX Runtime within 1e-4."""
    import onnxruntime as ort

    from tests.onnx.models import sparse_engine_forced
    from utils.onnx.engines import missing
    from utils.onnx.graph import SparseGraph
    assert missing("sparse") is None, missing("sparse")          # make test builds the kernels first
    arch, args, size = TINY[family]
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5, **args).eval()
    magnitude_prune_(model, 0.8, scope="layer")
    path = export_onnx(model, tmp_path / "model.onnx", input_size=size)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    graph = SparseGraph(path, threads=2)
    assert graph.tail is None                          # nothing left to ONNX Runtime
    blocks = [layer for layer in graph.layers() if layer.kind == "linear" and "blocks" in layer.name]
    assert len(blocks) >= 4 and all(layer.packed.sparsity > 0.75 for layer in blocks)
    for force in ("sparse", "dense", None):
        got = sparse_engine_forced(path, force).run(x)[0]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), force


def test_a_bare_state_dict_names_its_architecture_by_its_keys_where_only_one_has_them(tmp_path, one_torch_thread):
    """No config.json, no --arch: the one architecture (default arguments) with the file's keys and shapes is
    chosen, here among torchvision's; a file whose first layer and head many timm architectures share (a ViT) is
    told in one line to pass --arch rather than searched for minutes."""
    import timm
    import torchvision
    torch.manual_seed(0)
    torch.save(torchvision.models.efficientnet_b0(num_classes=3).state_dict(), tmp_path / "b0.pth")
    loaded = load_checkpoint(tmp_path / "b0.pth", keep_classifier=True)
    assert loaded.arch == "tv:efficientnet_b0" and loaded.num_classes == 3
    torch.save({"state_dict": timm.create_model("vit_tiny_patch16_224", num_classes=3).state_dict()},
               tmp_path / "vit.pth")
    with pytest.raises(UserError, match="architectures have its first layer and head; pass --arch") as err:
        load_checkpoint(tmp_path / "vit.pth")
    assert "\n" not in str(err.value)


def sparseml_vit_recipe_form(blocks: int) -> str:
    """A recipe written the way SparseML's timm ViT recipe is (integrations/rwightman-timm/recipes/
    vit_base.85.recal.config.yaml in SparseML's repository: `version`, a flat `modifiers:` list, every block's Linear
    weight named, GMP's logging and scoring keys, a StepLR LearningRateModifier after a SetLearningRateModifier),
    with epochs a test can afford: pruning from 25% at epoch 1, its cubic curve falling toward 3% (the recipe's
    recalibration) until epoch 3, 4 epochs."""
    names = "\n".join(f"            - blocks.{i}.{layer}.weight" for i in range(blocks)
                      for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    return f"""version: 1.1.0

modifiers:
    - !GMPruningModifier
        end_epoch: 3.0
        final_sparsity: 0.03
        global_sparsity: False
        init_sparsity: 0.25
        inter_func: cubic
        leave_enabled: True
        log_types: __ALL__
        mask_type: unstructured
        params:
{names}
        phased: False
        score_type: magnitude
        start_epoch: 1.0
        update_frequency: 0.5

    - !EpochRangeModifier
        end_epoch: 4.0
        start_epoch: 0.0

    - !SetLearningRateModifier
        constant_logging: False
        end_epoch: -1
        learning_rate: 0.0025
        log_types: __ALL__
        start_epoch: 0.0

    - !LearningRateModifier
        constant_logging: False
        end_epoch: -1.0
        init_lr: 0.0006
        log_types: __ALL__
        lr_class: StepLR
        lr_kwargs: {{'step_size': 1, 'gamma': 0.25}}
        start_epoch: 2.0
        update_frequency: -1.0
"""


def test_a_recipe_in_sparsemls_timm_vit_form_runs_on_a_timm_vit(tmp_path, trainer_config, one_torch_thread):
    arch, args, size = TINY["vit"]
    torch.manual_seed(0)
    model = build_model(arch, num_classes=6, **args)
    save_native_checkpoint(tmp_path / "dense.pt", model, arch=arch, arch_kwargs=args)
    (tmp_path / "recipe.yaml").write_text(sparseml_vit_recipe_form(blocks=2))
    fine_tune(tmp_path, tmp_path / "dense.pt", trainer_config(TRAINER), size, "--recipe", str(tmp_path / "recipe.yaml"),
              "--exp_name", "sm")
    final = torch.load(tmp_path / "exp" / "sm" / "model.pt", weights_only=True)["state_dict"]
    for i in range(2):
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            share = float((final[f"blocks.{i}.{layer}.weight"] == 0).float().mean())
            assert share == pytest.approx(0.03, abs=0.005), layer        # the curve's end, held after it
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "exp" / "sm" / "metrics.jsonl").read_text().splitlines()
           if "lr" in json.loads(line)]
    assert lrs[0] == pytest.approx(0.0025) and lrs[-1] < 0.0025

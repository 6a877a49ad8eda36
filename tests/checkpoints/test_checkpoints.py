"""Every checkpoint flavour round-trips from a tiny file in its real key layout; strict, clear errors.

The converters below build each upstream layout by explicit key construction, independently of the
loader's renames. ResNet-50 flavours are exercised with ResNet-18 geometry (a copy of the flavour YAML
with `arch: resnet18`) to stay fast; auto-detection is checked on the real ResNet-50/MobileNet layouts.
"""
import hashlib
import logging
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import utils.checkpoints.detect as detect_mod
import utils.checkpoints.flavours as flavours_mod
from models import build_model, model_task
from policies.modifiers.params import sparseml_alias, sparseml_mobilenet_alias
from utils.checkpoints import (
    FLAVOURS,
    check_dense_label,
    detect_flavour,
    file_sha256,
    load_checkpoint,
    load_flavour,
    save_native_checkpoint,
)
from utils.errors import UserError
from utils.paths import REPO_ROOT as REPO  # noqa: E402
from utils.registry import Registry
from utils.sparsity import prunable_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- tiny models and layouts


def make_model(arch: str, *, zero_head_bias: bool = False, seed: int = 0, **arch_kwargs) -> tuple[nn.Module, dict]:
    """A model with random BN statistics and 4 sparsified conv/linear weights (incl. the classifier)."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, **arch_kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
        if zero_head_bias:
            model.fc.bias.zero_()
        params = prunable_parameters(model)
        names = list(params)
        masks = {}
        for name in {names[0], names[1], names[len(names) // 2], names[-1]}:
            masks[name] = torch.rand(params[name].shape, generator=g) >= 0.6
            params[name].mul_(masks[name])
    return model.eval(), masks


def wrapped_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def acdc_state(model: nn.Module, masks: dict, *, rename=lambda k: k, prefix: str = "module.") -> dict:
    """AC/DC wrapping: X._layer.weight/bias plus float X._weight_mask/_bias_mask for every conv/linear."""
    wrapped, out = wrapped_names(model), {}
    for key, value in model.state_dict().items():
        module, param = key.rsplit(".", 1)
        new_module = rename(key).rsplit(".", 1)[0]
        if module in wrapped:
            out[f"{prefix}{new_module}._layer.{param}"] = value
            mask = masks.get(key, torch.ones_like(value, dtype=torch.bool))
            out[f"{prefix}{new_module}._{param}_mask"] = mask.float()
        else:
            out[f"{prefix}{new_module}.{param}"] = value
    return out


def acdc_container(model, masks, arch="resnet50", **kw) -> dict:
    return {"epoch": 99, "model_config": {"arch": arch, "dataset": "imagenet"},
            "model_state_dict": acdc_state(model, masks, **kw)}


def tf_name(key: str) -> str:
    """torchvision name -> the RigL TensorFlow port's name."""
    parts = key.split(".")
    if parts[0] in ("conv1", "bn1"):
        return ".".join(["initial_conv", "conv" if parts[0] == "conv1" else "bn"] + parts[1:])
    if parts[0] == "fc":
        return key
    layer, block, sub = parts[:3]
    if sub == "downsample":
        return ".".join([layer, "block", block, "shortcut", "conv" if parts[3] == "0" else "bn"] + parts[4:])
    return ".".join([layer, "block", block, "conv" + sub[-1], "conv" if sub.startswith("conv") else "bn"] + parts[3:])


def str_state(model: nn.Module, *, prefix: str = "module.") -> dict:
    """STR: torchvision/AC/DC keys, classifier as a bias-free 1x1 conv."""
    out = {}
    for key, value in model.state_dict().items():
        if key == "fc.bias":
            assert not value.any(), "STR classifiers have no bias: build the model with zero_head_bias"
            continue
        out[prefix + key] = value[:, :, None, None] if key == "fc.weight" else value
    return out


def native_raw(model: nn.Module, arch: str, masks: dict) -> dict:
    return {"format": "sparse-transfer-checkpoint", "version": 1, "arch": arch, "arch_kwargs": {},
            "num_classes": model.fc.out_features, "state_dict": dict(model.state_dict()), "masks": masks,
            "normalization": "dataset", "interpolation": "bilinear"}


def sparseml_container(model: nn.Module, alias) -> dict:
    """SparseML's save_model: keys in SparseML's names (the recipe-name aliases), every tensor as float32."""
    state = {alias(k): v.float() for k, v in model.state_dict().items()}
    return {"state_dict": state, "epoch": 3, "arch_key": "resnet", "recipe": "modifiers: []"}


# Layouts, built by explicit key construction from one of our models and its masks.
LAYOUTS = {
    "torchvision": lambda m, k: dict(m.state_dict()),
    "acdc": lambda m, k: acdc_container(m, k),
    "rigl": lambda m, k: acdc_container(m, k, arch="resnet50_rigl", rename=tf_name),
    "str_raw": lambda m, k: {"epoch": 0, "arch": "ResNet50", "state_dict": str_state(m), "best_acc1": 70.5},
    "mfac": lambda m, k: {"state_dict": str_state(m, prefix="")},
    "acdc_mobilenet": lambda m, k: acdc_container(m, k, arch="mobilenet"),
    "str_mobilenet_raw": lambda m, k: {"epoch": 0, "arch": "MobileNetV1", "state_dict": str_state(m)},
    "mfac_mobilenet": lambda m, k: {"model": str_state(m, prefix="")},
    "native": lambda m, k: native_raw(m, "resnet_small", k),
    "sparseml": lambda m, k: sparseml_container(m, sparseml_alias),
    "sparseml_mobilenet": lambda m, k: sparseml_container(m, sparseml_mobilenet_alias),
}
# flavour -> (architecture used in the round trip, layout); native files come from save_native_checkpoint.
CASES = {
    "torchvision_resnet50": ("resnet18", "torchvision"),
    "torchvision_resnet18": ("resnet18", "torchvision"),
    "torchvision_resnet34": ("resnet18", "torchvision"),
    "torchvision_resnet101": ("resnet18", "torchvision"),
    "torchvision_resnet152": ("resnet18", "torchvision"),
    "acdc_resnet50": ("resnet18", "acdc"),
    "gmp_resnet50": ("resnet18", "acdc"),
    "woodfisher_resnet50": ("resnet18", "acdc"),
    "lth_resnet50": ("resnet18", "acdc"),
    "rigl_resnet50": ("resnet18", "rigl"),
    "str_resnet50": ("resnet18", "str_raw"),
    "mfac_resnet50": ("resnet18", "mfac"),
    "acdc_mobilenet": ("mobilenet", "acdc_mobilenet"),
    "str_mobilenet": ("mobilenet", "str_mobilenet_raw"),
    "mfac_mobilenet": ("mobilenet", "mfac_mobilenet"),
    "native": ("resnet_small", "native"),
    "sparseml_resnet50": ("resnet18", "sparseml"),
    "sparseml_resnet18": ("resnet18", "sparseml"),
    "sparseml_resnet34": ("resnet18", "sparseml"),
    "sparseml_resnet101": ("resnet18", "sparseml"),
    "sparseml_resnet152": ("resnet18", "sparseml"),
    "sparseml_mobilenet": ("mobilenet", "sparseml_mobilenet"),
}


def flavour_for(name: str, tmp_path: Path, **overrides) -> str:
    """The flavour's name, or a YAML copy with `overrides` (e.g. a smaller arch) when any are given."""
    if not overrides:
        return name
    data = {**load_flavour(name).model_dump(), "detect": [], **overrides, "name": f"{name}_test"}
    path = tmp_path / f"{name}_test.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def expected_sparsity(model: nn.Module, masks: dict, *, with_head: bool) -> tuple[float, dict]:
    params = prunable_parameters(model, exclude_prefixes=() if with_head else ("fc",))
    per_layer = {n: (int((~masks[n]).sum()) / p.numel() if n in masks else 0.0) for n, p in params.items()}
    pruned = sum(int((~masks[n]).sum()) for n in params if n in masks)
    return pruned / sum(p.numel() for p in params.values()), per_layer


def assert_same_masks(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, mask in want.items():
        assert got[name].dtype == torch.bool and torch.equal(got[name], mask.reshape(got[name].shape)), name


def test_every_shipped_flavour_has_a_round_trip_case():
    """Detector flavours round-trip in test_yolov5_files.py (the checks below are a classifier's)."""
    detectors = {n for n in FLAVOURS.names() if model_task(FLAVOURS.get(n).arch or "resnet_small") == "detection"}
    assert detectors and set(CASES) == set(FLAVOURS.names()) - detectors


@pytest.fixture(scope="module")
def upstream_files(tmp_path_factory):
    """(model, masks, path) per (layout, arch), written once and shared by flavours with one layout."""
    cache = {}

    def get(layout: str, arch: str, arch_kwargs: dict, conv_head: bool):
        key = (layout, arch, repr(sorted(arch_kwargs.items())))
        if key not in cache:
            model, masks = make_model(arch, zero_head_bias=conv_head, **arch_kwargs)
            path = tmp_path_factory.mktemp("upstream") / f"{layout}.pt"
            if layout == "native":
                save_native_checkpoint(path, model, arch=arch, arch_kwargs=arch_kwargs, masks=masks,
                                       normalization={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                                       interpolation="bicubic", extra={"note": "test"})
            else:
                torch.save(LAYOUTS[layout](model, masks), path)
            cache[key] = model, masks, path
        return cache[key]

    return get


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_flavour_round_trips(name, upstream_files, tmp_path):
    flavour = load_flavour(name)
    arch, layout = CASES[name]
    model, masks, path = upstream_files(layout, arch, dict(flavour.arch_kwargs), flavour.classifier_from_conv)
    chosen = flavour_for(name, tmp_path, **({"arch": arch} if flavour.arch not in (None, arch) else {}))
    side = 32 if arch == "resnet_small" else 64
    x = torch.randn(2, 3, side, side)

    loaded = load_checkpoint(path, flavour=chosen, keep_classifier=True)
    assert (loaded.arch, loaded.flavour.method, loaded.classifier_loaded) == (arch, flavour.method, True)
    assert_same_masks(loaded.masks, masks)
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(x), model(x), atol=1e-5, rtol=1e-4)
    want_global, want_layers = expected_sparsity(model, masks, with_head=True)
    assert loaded.report.global_sparsity == want_global
    assert loaded.report.layer_sparsity() == want_layers
    assert loaded.report.classifier_sparsity == want_layers["fc.weight"]
    if name == "native":
        assert (loaded.interpolation, loaded.normalization["std"]) == ("bicubic", [0.25, 0.25, 0.25])
        assert loaded.header["extra"] == {"note": "test"} and loaded.header["num_classes"] == 10
        assert (loaded.flavour.interpolation, loaded.flavour.arch) == ("bicubic", arch)
    else:
        assert (loaded.interpolation, loaded.normalization) == (flavour.interpolation, "dataset")
    if "extends" in flavours_mod.RAW_FLAVOURS[name]:
        return  # same reader as its base flavour, whose downstream load is checked below

    down = load_checkpoint(path, flavour=chosen, num_classes=3)
    assert (down.num_classes, down.classifier_loaded) == (3, False)
    assert_same_masks(down.masks, {k: v for k, v in masks.items() if k != "fc.weight"})
    with torch.no_grad():
        assert torch.allclose(down.model.eval().forward_features(x), model.forward_features(x), atol=1e-5, rtol=1e-4)
    assert down.report.global_sparsity == expected_sparsity(model, masks, with_head=False)[0]
    assert down.report.classifier_sparsity == want_layers["fc.weight"]  # the dropped head is still reported


@pytest.fixture(scope="module")
def real_layouts():
    """Each layout built (in memory) from the real geometry its flavours name, once."""
    models, raws = {}, {}

    def get(layout: str, arch: str) -> dict:
        if arch not in models:
            models[arch] = make_model(arch, zero_head_bias=True)
        if (layout, arch) not in raws:
            raws[layout, arch] = LAYOUTS[layout](*models[arch])
        return raws[layout, arch]

    return get


@pytest.mark.parametrize("name", sorted(CASES))
def test_auto_detection_recognises_each_real_layout(name, real_layouts):
    raw = real_layouts(CASES[name][1], load_flavour(name).arch or "resnet_small")
    raw_flavour = flavours_mod.RAW_FLAVOURS[name]
    # derived flavours share their base's layout, unless they have detect rules of their own (another geometry)
    expected = name if "detect" in raw_flavour else raw_flavour.get("extends", name)
    assert detect_flavour(raw).name == expected


def test_auto_detected_load_and_the_native_writer(tmp_path):
    model, masks = make_model("resnet_small", widths=[8, 16, 32])
    path = tmp_path / "model.pt"
    save_native_checkpoint(path, model, arch="resnet_small", arch_kwargs={"widths": [8, 16, 32]}, masks=masks)
    loaded = load_checkpoint(path)
    assert loaded.detected and loaded.flavour.name == "native" and loaded.arch_kwargs == {"widths": [8, 16, 32]}
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="plain"):
        save_native_checkpoint(tmp_path / "bad.pt", model, arch="resnet_small", arch_kwargs={}, extra={"x": object()})


def test_str_soft_thresholds_are_applied(tmp_path):
    model, masks = make_model("mobilenet", zero_head_bias=True, width_mult=0.25)
    g = torch.Generator().manual_seed(1)
    sd, s = str_state(model), torch.full((1, 1), -2.0)
    t = torch.sigmoid(s)
    for key in [k for k in sd if k.endswith("weight") and sd[k].dim() == 4]:
        w = sd[key]
        below = (torch.rand(w.shape, generator=g) - 0.5) * t  # |value| < threshold -> becomes exactly 0
        sd[key] = torch.where(w == 0, below, torch.sign(w) * (w.abs() + t))
        sd[key.replace("weight", "sparseThreshold")] = s.clone()
    path = tmp_path / "str_raw.pt"
    torch.save({"epoch": 10, "arch": "MobileNetV1", "state_dict": sd}, path)
    loaded = load_checkpoint(path, flavour=flavour_for("str_mobilenet", tmp_path, arch_kwargs={"width_mult": 0.25}),
                             keep_classifier=True)
    assert_same_masks(loaded.masks, masks)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(x), model(x), atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- strictness


@pytest.fixture
def acdc_file(tmp_path):
    """A small AC/DC-format MobileNet (width 0.25) and a flavour YAML for it."""
    model, masks = make_model("mobilenet", width_mult=0.25)
    raw = acdc_container(model, masks, arch="mobilenet")
    flavour = flavour_for("acdc_mobilenet", tmp_path, arch_kwargs={"width_mult": 0.25})
    return model, masks, raw, flavour


def _save(raw, path):
    torch.save(raw, path)
    return path


def test_unexpected_and_missing_keys_are_user_errors(acdc_file, tmp_path):
    _, _, raw, flavour = acdc_file
    extra = {**raw, "model_state_dict": {**raw["model_state_dict"], "module.extra.weight": torch.ones(2)}}
    with pytest.raises(UserError, match=r"acdc_mobilenet_test.*1 unexpected \(extra\.weight\)"):
        load_checkpoint(_save(extra, tmp_path / "extra.pt"), flavour=flavour)
    sd = dict(raw["model_state_dict"])
    del sd["module.model.1.3._layer.weight"]
    with pytest.raises(UserError, match=r"1 missing \(model\.1\.3\.weight\)"):
        load_checkpoint(_save({**raw, "model_state_dict": sd}, tmp_path / "missing.pt"), flavour=flavour)
    # The registered (width 1.0) flavour on this width-0.25 file: a shape error, not a crash.
    with pytest.raises(UserError, match=r"shapes do not match architecture 'mobilenet'"):
        load_checkpoint(_save(raw, tmp_path / "ok.pt"))
    # A ResNet-18 file read as ResNet-50.
    r18, _ = make_model("resnet18")
    with pytest.raises(UserError, match=r"165 missing \(layer1\.0\.bn3\.bias"):
        load_checkpoint(_save(dict(r18.state_dict()), tmp_path / "r18.pt"), flavour="torchvision_resnet50")


def test_masks_disagreeing_with_zeros_fail_and_zeros_outside_the_mask_are_reported(acdc_file, tmp_path):
    model, masks, raw, flavour = acdc_file
    name = sorted(n for n in masks if not n.startswith("fc."))[0]
    mod = name.rsplit(".", 1)[0]
    sd = dict(raw["model_state_dict"])
    bad_mask = sd[f"module.{mod}._weight_mask"].clone()
    kept = (bad_mask.flatten() == 1).nonzero()[0].item()
    bad_mask.view(-1)[kept] = 0  # prune an entry whose weight is nonzero
    with pytest.raises(UserError, match=rf"disagree.*{mod}\.weight \(1 nonzero\)"):
        load_checkpoint(_save({**raw, "model_state_dict": {**sd, f"module.{mod}._weight_mask": bad_mask}},
                              tmp_path / "bad.pt"), flavour=flavour)
    weight = sd[f"module.{mod}._layer.weight"].clone()
    weight.view(-1)[kept] = 0.0  # a zero the mask keeps: fine, reported
    loaded = load_checkpoint(_save({**raw, "model_state_dict": {**sd, f"module.{mod}._layer.weight": weight}},
                                   tmp_path / "zeros.pt"), flavour=flavour, keep_classifier=True)
    assert loaded.report.zeros_outside_mask == 1 and loaded.report.mask_source == "buffers"
    assert_same_masks(loaded.masks, masks)
    half = dict(sd)
    half[f"module.{mod}._weight_mask"] = sd[f"module.{mod}._weight_mask"] * 0.5
    with pytest.raises(UserError, match="values other than 0 and 1"):
        load_checkpoint(_save({**raw, "model_state_dict": half}, tmp_path / "half.pt"), flavour=flavour)


_CALLS = []


def _record(*args):
    _CALLS.append(args)
    return 0


class _Evil:
    def __reduce__(self):
        return (_record, ("ran",))


def test_pickles_needing_arbitrary_globals_are_refused(tmp_path):
    model, masks = make_model("resnet_small")
    path = _save({**native_raw(model, "resnet_small", masks), "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"refusing to unpickle .*_record.*trusted_globals"):
        load_checkpoint(path)
    assert _CALLS == []


def test_allow_listed_training_objects_load(acdc_file, tmp_path, monkeypatch):
    """Raw AC/DC training checkpoints store optimizer/scheduler classes and numpy floats."""
    model, masks, raw, flavour = acdc_file
    fake = types.ModuleType("optimization.lr_schedulers")
    cosine = type("CosineLR", (), {"__module__": "optimization.lr_schedulers"})
    fake.CosineLR = cosine
    path = tmp_path / "train.pt"
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "optimization", types.ModuleType("optimization"))
        m.setitem(sys.modules, "optimization.lr_schedulers", fake)
        torch.save({**raw, "optimizer": {"type": torch.optim.SGD, "state_dict": {"state": {}}},
                    "lr_scheduler": {"type": cosine, "state_dict": {"_last_lr": [np.float64(0.01)]}}}, path)
    assert "optimization" not in sys.modules  # the class is not importable when loading
    loaded = load_checkpoint(path, flavour=flavour, keep_classifier=True)
    assert_same_masks(loaded.masks, masks)
    with pytest.raises(UserError, match=r"refusing to unpickle .*torch\.optim\.sgd\.SGD"):
        load_checkpoint(path, flavour="torchvision_resnet50")


def test_unreadable_files_are_user_errors(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(text, flavour="native")
    model, masks = make_model("resnet_small")
    good = tmp_path / "good.pt"
    save_native_checkpoint(good, model, arch="resnet_small", arch_kwargs={}, masks=masks)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    newer = _save({**native_raw(model, "resnet_small", masks), "version": 2}, tmp_path / "newer.pt")
    with pytest.raises(UserError, match="newer version"):
        load_checkpoint(newer, flavour="native")


def test_flavour_names_and_files_are_checked(tmp_path):
    with pytest.raises(UserError, match="did you mean 'acdc_resnet50'"):
        load_flavour("acdc_resnet5")
    bad = {"name": "bad", "description": "x", "arch": "resnet50", "classifier_keys": ["fc"], "renames": {"(": "x"}}
    for change, pattern in [({}, r"bad\.yaml: key 'renames'.*invalid regex"),
                            ({"renames": {}, "colour": 1}, r"key 'colour'"),
                            ({"renames": {}, "trusted_globals": ["os.system"]}, "could run arbitrary code"),
                            ({"renames": {}, "arch": "resnet5O"}, "did you mean 'resnet50'"),
                            ({"renames": {}, "extends": "acdc_resnt50"}, "did you mean 'acdc_resnet50'")]:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**bad, **change}))
        with pytest.raises(UserError, match=pattern):
            load_flavour(str(path))
    derived = tmp_path / "mine.yaml"
    derived.write_text(yaml.safe_dump({"name": "mine", "extends": "rigl_resnet50", "description": "d", "method": "X"}))
    mine = load_flavour(str(derived))
    assert (mine.method, mine.interpolation, mine.detect) == ("X", "bicubic", [])


def test_shipped_flavour_files_are_consistent():
    for path in sorted((REPO / "configs" / "checkpoints").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert data["name"] == path.stem
        assert data.get("detect") or data.get("extends"), f"{path.name}: no way to auto-detect it"


def test_detection_ambiguity_and_no_match_are_user_errors(monkeypatch):
    model, masks = make_model("resnet_small")
    with pytest.raises(UserError, match="could not recognise.*--checkpoint_flavour"):
        detect_flavour({"weights": dict(model.state_dict())})
    twin = Registry("checkpoint flavour")
    base = load_flavour("native")
    twin.add("native", base)
    twin.add("native_copy", base.model_copy(update={"name": "native_copy"}))
    monkeypatch.setattr(detect_mod, "FLAVOURS", twin)
    with pytest.raises(UserError, match=r"matches several flavours \(native, native_copy\).*--checkpoint_flavour"):
        detect_flavour(native_raw(model, "resnet_small", masks))


def test_classifier_options_and_legacy_batchnorm_files(tmp_path):
    model, masks = make_model("resnet18")
    legacy = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = _save(legacy, tmp_path / "legacy.pt")
    chosen = flavour_for("torchvision_resnet50", tmp_path, arch="resnet18")
    loaded = load_checkpoint(path, flavour=chosen, keep_classifier=True)
    assert loaded.num_classes == 10 and loaded.report.mask_source == "zeros"
    with pytest.raises(UserError, match="has 10 classes, not 5"):
        load_checkpoint(path, flavour=chosen, keep_classifier=True, num_classes=5)
    headless = _save({k: v for k, v in legacy.items() if not k.startswith("fc.")}, tmp_path / "headless.pt")
    assert load_checkpoint(headless, flavour=chosen, num_classes=4).num_classes == 4
    with pytest.raises(UserError, match="keep_classifier needs a classifier"):
        load_checkpoint(headless, flavour=chosen, keep_classifier=True)


def test_file_sha256(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 3_000_001)
    assert file_sha256(path, chunk_bytes=4096) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_prints_the_report(tmp_path):
    model, masks = make_model("resnet_small")
    path = tmp_path / "model.pt"
    save_native_checkpoint(path, model, arch="resnet_small", arch_kwargs={}, masks=masks)
    done = subprocess.run([sys.executable, "-m", "utils.checkpoints", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    want, layers = expected_sparsity(model, masks, with_head=True)
    assert "flavour:       native (auto-detected)" in done.stdout
    assert "architecture:  resnet_small, 10 classes" in done.stdout
    assert f"global sparsity: {want:.4f}" in done.stdout
    first = sorted(masks)[0]
    assert any(line.startswith(first) and f"{layers[first]:.4f}" in line for line in done.stdout.splitlines())


def test_a_pruned_file_in_a_dense_flavour_is_named_once(tmp_path, caplog):
    """torchvision_resnet18 labels files 'Dense'; results about to call one that is mostly zeros 'Dense' say so,
    once per file; a label given by the user, or a dense file, says nothing."""
    model = build_model("resnet18", num_classes=10)
    with torch.no_grad():
        for p in prunable_parameters(model).values():
            p[p.abs() < p.abs().flatten().quantile(0.8)] = 0
    path = _save(dict(model.state_dict()), tmp_path / "pruned_r18.pth")
    dense = _save(dict(build_model("resnet18", num_classes=10).state_dict()), tmp_path / "dense_r18.pth")
    loaded, plain = load_checkpoint(path), load_checkpoint(dense)
    assert loaded.flavour.name == "torchvision_resnet18" and loaded.method == plain.method == "Dense"
    with caplog.at_level(logging.WARNING, logger="utils.checkpoints.load"):
        check_dense_label(plain.method, plain.report.global_sparsity, dense)
        check_dense_label("Magnitude", loaded.report.global_sparsity, path)
        for _ in range(2):
            check_dense_label(loaded.method, loaded.report.global_sparsity, path)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "pruned_r18.pth is 80.0% sparse" in warned[0] and "--model_label" in warned[0]
    from utils.checkpoints.__main__ import format_report  # `python -m utils.checkpoints FILE` says so too
    assert "note: the flavour labels it 'Dense'" in format_report(loaded) and "note:" not in format_report(plain)


def test_non_finite_weights_are_refused_but_a_models_infinite_bounds_are_not(tmp_path):
    """NaN or inf in a weight or a BatchNorm statistic: a corrupt file or a diverged run, refused in one line; +inf in
    another buffer is a model's own constant (timm's Gemma-4 ViT keeps clip bounds so) and loads."""
    from models import build_model
    from utils.checkpoints import load_checkpoint, save_native_checkpoint
    from utils.errors import UserError

    model = build_model("resnet_small", num_classes=3)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    save_native_checkpoint(tmp_path / "nan.pt", model, arch="resnet_small", arch_kwargs={})
    with pytest.raises(UserError, match="NaN or infinite values in 1 tensor") as err:
        load_checkpoint(tmp_path / "nan.pt", keep_classifier=True)
    assert "fc.weight" in str(err.value) and "\n" not in str(err.value)
    model = build_model("resnet_small", num_classes=3)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = float("inf")
    save_native_checkpoint(tmp_path / "inf_stat.pt", model, arch="resnet_small", arch_kwargs={})
    with pytest.raises(UserError, match="NaN or infinite"):
        load_checkpoint(tmp_path / "inf_stat.pt")
    from utils.checkpoints.load import _check_finite
    bounds = {"w": torch.ones(2), "clip_max": torch.full((4,), float("inf"))}
    _check_finite(bounds, {"w"}, "f")                        # a buffer's +inf: the model's own constant
    with pytest.raises(UserError, match="clip_max"):
        _check_finite({**bounds, "clip_max": torch.full((4,), float("nan"))}, {"w"}, "f")     # NaN never

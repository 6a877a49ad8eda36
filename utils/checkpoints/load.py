"""Checkpoint files in, (model, masks, sparsity report) out -- the only place that knows key layouts.

The layouts themselves live in flavour YAML files (configs/checkpoints/, see utils.checkpoints.flavours).
Loading is strict: after a flavour's renames the file's keys must equal the model's, up to the classifier
(dropped unless kept) and legacy files' missing BatchNorm `num_batches_tracked` counters. Files are read
with `weights_only=True`; objects beyond tensors and plain containers must be allow-listed by the flavour.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from models import build_model, classes_from_head, classifier_outputs, head_key_patterns
from utils.checkpoints.detect import detect_flavour, flavour_matches
from utils.checkpoints.external import read_external, state_dict_of
from utils.checkpoints.files import read_checkpoint_file
from utils.checkpoints.flavours import FLAVOURS, Flavour, all_module_globals, all_trusted_globals, load_flavour
from utils.checkpoints.native import NATIVE_VERSION, NativeHeader
from utils.checkpoints.report import LayerSparsity, SparsityReport
from utils.checkpoints.state import NormalizedState, extract_state_dict, normalize_state
from utils.config import validate
from utils.errors import UserError
from utils.sparsity import check_masks_match_zeros, prunable_parameters

log = logging.getLogger(__name__)

_SHOW = 5  # offending keys listed in an error message
DENSE_LABEL = "Dense"
SPARSE_DENSE_FILE = 0.05  # a 'Dense' flavour's file with more zeros than this is somebody's pruned model
_WARNED_SPARSE: set[str] = set()  # files already warned of (a command may load its upstream twice)


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    masks: dict[str, torch.Tensor]  # our parameter names -> bool (True = kept), sparse layers only
    flavour: Flavour
    arch: str
    arch_kwargs: dict[str, Any]
    report: SparsityReport
    source_path: Path
    num_classes: int  # classifier outputs of `model`
    classifier_loaded: bool  # False: the classifier is freshly initialised
    interpolation: str  # upstream training resize interpolation (native files: from the file)
    normalization: Any  # "dataset" or {"mean": [...], "std": [...]}
    input_size: int
    detected: bool = False  # the flavour was auto-detected
    header: dict[str, Any] = field(default_factory=dict)  # native files: their metadata
    recipe: str | None = None  # the recipe text the file carries (flavour's recipe_key), e.g. SparseML's

    @property
    def extra(self) -> dict[str, Any]:
        """A native file's `extra` metadata (method label, input size, quantization state); {} otherwise."""
        return dict(self.header.get("extra") or {})

    @property
    def method(self) -> str:
        """The results' `model` label the file implies, one rule for every kind of run: a native file's own
        method (e.g. 'Magnitude' from a prune), else its flavour's method, else the flavour's name."""
        return self.extra.get("method") or self.flavour.method or self.flavour.name or "Dense"


def _resolve_arch(flavour: Flavour, raw: Any, source: str) -> tuple[str, dict, dict]:
    """(arch, arch_kwargs, native header) -- native files name their own architecture."""
    if flavour.arch is not None:
        return flavour.arch, dict(flavour.arch_kwargs), {}
    if not isinstance(raw, Mapping):
        raise UserError(f"{source}: flavour {flavour.name!r} expects a mapping with an 'arch' entry")
    fields = {k: raw[k] for k in NativeHeader.model_fields if k in raw}
    if isinstance(fields.get("version"), int) and fields["version"] > NATIVE_VERSION:
        raise UserError(f"{source}: written by a newer version of this code (format version {fields['version']} > "
                        f"{NATIVE_VERSION}); update the code")
    header = validate(fields, NativeHeader, source=source).model_dump()
    if isinstance(raw.get("extra"), Mapping):
        header["extra"] = dict(raw["extra"])
    return header["arch"], dict(header["arch_kwargs"]), header


def _replace_with_identity(model: nn.Module, name: str) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())


def _first(names: set[str] | list[str]) -> str:
    names = sorted(names)
    more = f" (+{len(names) - _SHOW} more)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def _split_classifier(state: NormalizedState, flavour: Flavour) -> NormalizedState:
    """Pop the file's classifier tensors and masks (keys matching `classifier_keys`) out of `state`."""
    def pop(d: dict) -> dict:
        return {k: d.pop(k) for k in [k for k in d if any(re.search(p, k) for p in flavour.classifier_keys)]}

    return NormalizedState(tensors=pop(state.tensors), weight_masks=pop(state.weight_masks),
                           bias_masks=pop(state.bias_masks))


def _adapt_classifier(head: NormalizedState, model: nn.Module, flavour: Flavour, *, source: str) -> NormalizedState:
    """A 1x1-conv classifier (STR) becomes the model's Linear; its missing bias becomes zeros."""
    name = model.classifier_name
    weight = head.tensors.get(f"{name}.weight")
    if not flavour.classifier_from_conv or weight is None or weight.dim() != 4:
        return head
    if tuple(weight.shape[2:]) != (1, 1):
        raise UserError(f"{source}: classifier {name}.weight is a {tuple(weight.shape[2:])} conv, expected 1x1")
    tensors = {**head.tensors, f"{name}.weight": weight.flatten(1)}
    bias = model.get_classifier().state_dict().get("bias")
    if bias is not None:
        tensors.setdefault(f"{name}.bias", torch.zeros_like(bias))
    masks = {k: m.flatten(1) if m.dim() == 4 else m for k, m in head.weight_masks.items()}
    return NormalizedState(tensors=tensors, weight_masks=masks, bias_masks=head.bias_masks)


def _check_keys(model: nn.Module, tensors: dict, *, allowed_missing: set[str], flavour: Flavour, arch: str,
                source: str) -> None:
    expected = model.state_dict()
    missing = {k for k in expected if k not in tensors and k not in allowed_missing
               and not k.endswith("num_batches_tracked")}  # legacy files predate this counter
    unexpected = set(tensors) - set(expected)
    if missing or unexpected:
        parts = ([f"{len(missing)} missing ({_first(missing)})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected ({_first(unexpected)})"] if unexpected else [])
        raise UserError(f"{source}: keys do not match architecture {arch!r} under flavour {flavour.name!r}: "
                        f"{'; '.join(parts)}; check --checkpoint_flavour (or the flavour's renames)")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in tensors.items()
           if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise UserError(f"{source}: shapes do not match architecture {arch!r} under flavour {flavour.name!r}: "
                        f"{'; '.join(bad[:_SHOW])}; check --checkpoint_flavour and its arch_kwargs")


def _masks_as_bool(masks: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], *, what: str,
                   source: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, mask in masks.items():
        if name not in params:
            raise UserError(f"{source}: {what} mask for {name!r}, which is not a conv/linear parameter of the model")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise UserError(f"{source}: {what} mask for {name!r} has shape {tuple(mask.shape)}, "
                            f"the parameter {tuple(params[name].shape)}")
        if mask.dtype != torch.bool:
            as_bool = mask != 0
            if not torch.equal(as_bool.to(mask.dtype), mask):
                raise UserError(f"{source}: {what} mask for {name!r} holds values other than 0 and 1")
            mask = as_bool
        out[name] = mask
    return out


def _check_agreement(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], *, source: str,
                     flavour: Flavour) -> None:
    bad = check_masks_match_zeros(params, masks)
    if bad:
        counts = [f"{n} ({int((params[n].detach()[~masks[n]] != 0).sum())} nonzero)" for n in bad[:_SHOW]]
        raise UserError(f"{source}: stored masks disagree with the weights under flavour {flavour.name!r}: pruned "
                        f"entries hold nonzero values in {len(bad)} tensor(s): {'; '.join(counts)}; the file is "
                        f"inconsistent (or the flavour's mask settings are wrong)")


def _mask_source(flavour: Flavour, raw: Any, state: NormalizedState, *, source: str) -> str:
    """'buffers'/'entry' when the file stores masks (moved into `state`), else 'zeros'."""
    spec = flavour.mask
    if spec.source == "entry":
        entry = raw.get(spec.entry_key) if isinstance(raw, Mapping) else None
        if entry is None:
            return "zeros"
        if not isinstance(entry, Mapping) or not all(isinstance(v, torch.Tensor) for v in entry.values()):
            raise UserError(f"{source}: '{spec.entry_key}' must map parameter names to mask tensors")
        state.weight_masks.update(entry)
        return "entry"
    if spec.source == "buffers" and not state.weight_masks:
        raise UserError(f"{source}: flavour {flavour.name!r} expects mask buffers (*{spec.weight_mask_suffix}) but "
                        "the file has none; use a flavour whose mask source is 'zeros' or 'auto'")
    return "buffers" if state.weight_masks else "zeros"


def _masks_and_report(model: nn.Module, state: NormalizedState, file_head: NormalizedState, *, mask_source: str,
                      keep_classifier: bool, flavour: Flavour, source: str) -> tuple[dict, SparsityReport]:
    """Masks of the sparse layers (checked against the zeros) and the sparsity report."""
    head = model.classifier_name
    params = prunable_parameters(model, exclude_prefixes=() if keep_classifier else (head,))
    if mask_source == "zeros":
        masks = {n: p.detach() != 0 for n, p in params.items()}
    else:
        masks = _masks_as_bool(state.weight_masks, params, what="weight", source=source)
        _check_agreement(params, masks, source=source, flavour=flavour)
    named = dict(model.named_parameters())
    bias_masks = _masks_as_bool(state.bias_masks, named, what="bias", source=source)
    _check_agreement(named, bias_masks, source=source, flavour=flavour)
    if any(not bool(m.all()) for m in bias_masks.values()):
        log.warning("%s: pruned bias entries are zero but not kept as masks (only weights are masked)", source)
    masks = {n: m for n, m in masks.items() if not bool(m.all())}

    weight = next((v for k, v in file_head.tensors.items() if k.endswith("weight")), None)
    head_mask = file_head.weight_masks.get(f"{head}.weight")
    pruned_head = (head_mask == 0) if head_mask is not None and mask_source != "zeros" else (weight == 0)
    head_sparsity = None if weight is None else int(pruned_head.sum()) / weight.numel()
    per_layer = {n: LayerSparsity(numel=p.numel(), pruned=int((~masks[n]).sum()) if n in masks else 0,
                                  zeros=int((p.detach() == 0).sum())) for n, p in params.items()}
    return masks, SparsityReport(per_layer=per_layer, mask_source=mask_source, classifier_sparsity=head_sparsity)


def _choose_flavour(raw: Any, flavour: Flavour | None, source: str) -> Flavour:
    if flavour is None:
        return detect_flavour(raw, source=source)
    if flavour.detect and not flavour_matches(flavour, raw):
        log.warning("%s does not look like flavour %r (its detect rules do not match); loading anyway",
                    source, flavour.name)
    return flavour


def _read(path: Path, named: Flavour | None, *, arch: str | None) -> tuple[Any, Flavour]:
    """The file's content and its flavour: a timm / Hugging Face folder or file as a native mapping; else the
    torch file, its flavour named or detected; a state dict no flavour knows, as the architecture a config.json
    beside it or `arch` names."""
    source = str(path)
    raw = read_external(path, arch=arch) if named is None else None
    if raw is None:
        raw = read_checkpoint_file(path, trusted_globals=named.trusted_globals if named else all_trusted_globals(),
                                   module_globals=named.module_globals if named else all_module_globals(),
                                   flavour_name=named.name if named and named.name in FLAVOURS else None)
    if isinstance(raw, Mapping) and raw.get("source_format"):
        return raw, _external_flavour(raw)
    try:
        return raw, _choose_flavour(raw, named, source)
    except UserError:
        plain = state_dict_of(path, raw, arch) if named is None else None   # a timm / torchvision state dict
        if plain is None:
            raise
        return plain, _external_flavour(plain)


def _external_flavour(raw: Mapping) -> Flavour:
    """The native layout's flavour, named for a file read by utils.checkpoints.external."""
    return FLAVOURS.get("native").model_copy(update={
        "name": raw["source_format"], "description": "a timm, Hugging Face or torchvision file, read as the native "
                                                     "layout (utils/checkpoints/external.py)"})


def load_checkpoint(path: str | Path, *, flavour: str | None = None, num_classes: int | None = None,
                    keep_classifier: bool = False, arch: str | None = None) -> LoadedCheckpoint:
    """Read `path` with `flavour` (auto-detected when None) into one of our models, strictly. `path` may also be a
    timm / Hugging Face model folder or file (utils.checkpoints.external; `arch` names the architecture of one
    without config.json).

    keep_classifier=False: the file's classifier is dropped and a fresh dense one with `num_classes`
    outputs (default: the file's count) is built. keep_classifier=True loads it (num_classes must match).
    """
    path, source = Path(path), str(path)
    named = load_flavour(flavour) if flavour else None
    raw, chosen = _read(path, named, arch=arch)
    hint, (arch, arch_kwargs, header) = arch, _resolve_arch(chosen, raw, source)
    if hint and hint != arch:
        log.warning("%s names its architecture (%s, flavour %r): --arch %s is not used", source, arch, chosen.name,
                    hint)
    if header:  # the returned flavour describes this file (callers read interpolation etc. from it)
        with torch.device("meta"):
            shape = build_model(arch, num_classes=1, **arch_kwargs)
        chosen = chosen.model_copy(update={"arch": arch, "arch_kwargs": arch_kwargs,
                                           "interpolation": header["interpolation"],
                                           "normalization": header["normalization"],
                                           "classifier_keys": head_key_patterns(shape)})
    state = normalize_state(extract_state_dict(raw, chosen, source=source)[0], chosen, source=source)
    mask_source = _mask_source(chosen, raw, state, source=source)
    file_head = _split_classifier(state, chosen)
    file_classes = _file_classes(file_head, arch, header, keep_classifier=keep_classifier, num_classes=num_classes,
                                 flavour=chosen, source=source)
    model = build_model(arch, num_classes=num_classes or file_classes or 1000, **arch_kwargs)
    head_keys = {f"{model.classifier_name}.{k}" for k in model.get_classifier().state_dict()}
    if keep_classifier:
        kept = _adapt_classifier(file_head, model, chosen, source=source)
        for mine, theirs in ((state.tensors, kept.tensors), (state.weight_masks, kept.weight_masks),
                             (state.bias_masks, kept.bias_masks)):
            mine.update(theirs)
    _check_keys(model, state.tensors, allowed_missing=set() if keep_classifier else head_keys,
                flavour=chosen, arch=arch, source=source)
    _check_finite(state.tensors, {n for n, _ in model.named_parameters()}, source)
    model.load_state_dict({**model.state_dict(), **state.tensors})
    masks, report = _masks_and_report(model, state, file_head, mask_source=mask_source,
                                      keep_classifier=keep_classifier, flavour=chosen, source=source)
    masks = _remove_layers_(model, masks, header.get("extra", {}).get("removed_layers", []))
    return LoadedCheckpoint(
        model=model, masks=masks, flavour=chosen, arch=arch, arch_kwargs=arch_kwargs, report=report,
        source_path=path, num_classes=classifier_outputs(model), classifier_loaded=keep_classifier,
        interpolation=chosen.interpolation, normalization=chosen.normalization,
        # native files record the size they were trained at; otherwise the model's own default
        input_size=(header.get("extra", {}).get("input_size", model.default_input_size) if header
                    else chosen.input_size),
        detected=named is None, header=header, recipe=_embedded_recipe(raw, chosen))


def _file_classes(file_head, arch: str, header: dict, *, keep_classifier: bool, num_classes: int | None,
                  flavour, source: str) -> int | None:
    """The class count of the file's classifier (or its header), checked against what the caller asks for."""
    weight = next((v for k, v in file_head.tensors.items() if k.endswith("weight")), None)
    file_classes = classes_from_head(arch, int(weight.shape[0])) if weight is not None else header.get("num_classes")
    if keep_classifier and weight is None:
        raise UserError(f"{source}: keep_classifier needs a classifier in the file, but no key matches "
                        f"{flavour.classifier_keys} under flavour {flavour.name!r}")
    if keep_classifier and num_classes is not None and num_classes != file_classes:
        raise UserError(f"{source}: the file's classifier has {file_classes} classes, not {num_classes}; "
                        "drop keep_classifier to rebuild it")
    return file_classes


def _check_finite(tensors: dict[str, torch.Tensor], parameters: set[str], source: str) -> None:
    """Weights and normalisation statistics must be finite (NaN or inf there: a corrupt file or a diverged run);
    other buffers may hold +-inf (a model's clip bounds: timm's Gemma-4 ViT), never NaN."""
    def broken_tensor(name: str, v: torch.Tensor) -> bool:
        if not v.is_floating_point():
            return False
        if name in parameters or name.endswith(("running_mean", "running_var")):
            return not bool(torch.isfinite(v).all())
        return bool(torch.isnan(v).any())

    broken = [k for k, v in tensors.items() if broken_tensor(k, v)]
    if broken:
        raise UserError(f"{source}: holds NaN or infinite values in {len(broken)} tensor(s) ({_first(broken)}); the "
                        "file is corrupt or was saved from a run that diverged")


def _remove_layers_(model: nn.Module, masks: dict[str, torch.Tensor], removed: list[str]) -> dict[str, torch.Tensor]:
    """The layers a LayerPruningModifier pruned away become Identity again; their masks go."""
    for name in removed:
        _replace_with_identity(model, name)
    return {n: m for n, m in masks.items() if not n.startswith(tuple(f"{r}." for r in removed))}


def check_dense_label(label: str, sparsity: float, source: str | Path) -> None:
    """Warn (once per file) when results would call a file 'Dense' (its flavour's label, e.g. a torchvision
    state dict) although it is mostly zeros: somebody's pruned model, whose method the user should name."""
    if label != DENSE_LABEL or sparsity <= SPARSE_DENSE_FILE or str(source) in _WARNED_SPARSE:
        return
    _WARNED_SPARSE.add(str(source))
    log.warning("%s is %.1f%% sparse, but its flavour labels it %r in results; pass --model_label to name its "
                "method (a study: the upstream's `model`)", source, 100 * sparsity, DENSE_LABEL)


def _embedded_recipe(raw: Any, flavour: Flavour) -> str | None:
    """The recipe text stored in the file under the flavour's `recipe_key`, if it is text."""
    if flavour.recipe_key is None or not isinstance(raw, Mapping):
        return None
    text = raw.get(flavour.recipe_key)
    return text if isinstance(text, str) and text.strip() else None

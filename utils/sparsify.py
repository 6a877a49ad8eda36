"""The Sparsify sparse-transfer experience, open: use case + data + optim level -> a deployable sparse model.

    run_sparse_transfer(SparseTransferOptions(use_case="ic", data="/data/flowers", optim_level=0.5))

Pieces, each usable alone: the use-case registry (`resolve_use_case`), the local model zoo
(`load_zoo`, configs/zoo.yaml), optim-level selection (`optim_target`, `select_model`, pure functions), and
the run (`run_sparse_transfer`): fine-tune with a recipe (utils.finetune), export ONNX (utils.export), time
the result against a dense model in ONNX Runtime, write summary.json + summary.md in the run directory.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import Field, field_validator, model_validator

from models import MODELS, build_model
from utils.config import StrictModel, read_yaml, validate
from utils.errors import UserError
from utils.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ZOO = ROOT / "configs" / "zoo.yaml"
DEFAULT_TRAINER = ROOT / "configs" / "trainers" / "study_full_lr001.yaml"   # with a recipe: only the optimizer
RECIPE_INT8 = ROOT / "configs" / "recipes" / "sparse_transfer_resnet50.yaml"
RECIPE_FP32 = ROOT / "configs" / "recipes" / "sparse_transfer_fp32.yaml"

# ---------------------------------------------------------------- use cases


@dataclass(frozen=True)
class UseCase:
    """One Sparsify use case; `dataset` is the dataset registry entry its data is read with (None: unsupported)."""

    name: str
    label: str
    aliases: tuple[str, ...]
    dataset: str | None = None

    @property
    def supported(self) -> bool:
        return self.dataset is not None


USE_CASES: Registry[UseCase] = Registry("use case")
for _case in (
    UseCase("cv-classification", "image classification",
            ("ic", "classification", "image-classification", "img-classification"), dataset="imagefolder"),
    UseCase("cv-detection", "object detection", ("detection", "object-detection", "od")),
    UseCase("cv-segmentation", "image segmentation",
            ("segmentation", "image-segmentation", "instance-segmentation", "semantic-segmentation")),
    UseCase("nlp-question_answering", "question answering", ("question-answering", "qa")),
    UseCase("nlp-text_classification", "text classification", ("text-classification",)),
    UseCase("nlp-sentiment_analysis", "sentiment analysis", ("sentiment-analysis", "sentiment")),
    UseCase("nlp-token_classification", "token classification", ("token-classification",)),
    UseCase("nlp-named_entity_recognition", "named entity recognition", ("named-entity-recognition", "ner")),
):
    USE_CASES.add(_case.name, _case)


def normalize_use_case(name: str) -> str:
    """Case, '-', '_' and spaces do not matter: 'Image_Classification' == 'image-classification'."""
    return "".join(c for c in str(name).lower() if c not in "-_ ")


@functools.cache
def _alias_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for name in USE_CASES.names():
        for alias in (name, *USE_CASES.get(name).aliases):
            key = normalize_use_case(alias)
            if index.setdefault(key, name) != name:
                raise ValueError(f"use-case alias {alias!r} names both {index[key]!r} and {name!r}")
    return index


def supported_use_cases() -> str:
    return "; ".join(f"{c.name} (also {', '.join(c.aliases)})" for c in map(USE_CASES.get, USE_CASES.names())
                     if c.supported)


def resolve_use_case(name: str) -> UseCase:
    """The supported use case `name` (or an alias) names; unsupported/unknown ones raise listing what works."""
    canonical = _alias_index().get(normalize_use_case(name))
    if canonical is None:
        raise UserError(f"--use-case: {unknown_name_message('use case', name, USE_CASES.names())}; "
                        f"supported now: {supported_use_cases()}")
    case = USE_CASES.get(canonical)
    if not case.supported:
        raise UserError(f"--use-case {name!r} ({case.name}, {case.label}) is not supported yet; "
                        f"supported: {supported_use_cases()}")
    return case


# ---------------------------------------------------------------- the zoo


class ZooEntry(StrictModel):
    """One upstream checkpoint of configs/zoo.yaml (see the comments there for each field)."""

    name: str = Field(min_length=1)
    path: str
    flavour: str | None = None
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    sparsity: float = Field(ge=0, lt=1)
    quantized: bool = False
    params: int | None = Field(default=None, gt=0)   # backbone parameters; computed from arch when omitted

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in MODELS:
            raise ValueError(unknown_name_message("architecture", arch, MODELS.names()))
        return arch

    @property
    def pruned(self) -> bool:
        return self.sparsity > 0

    @property
    def nonzero_params(self) -> float:
        assert self.params is not None, "sizes are filled by load_zoo"
        return self.params * (1.0 - self.sparsity)


class Zoo(StrictModel):
    models: list[ZooEntry] = Field(default_factory=list)

    @field_validator("models", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value   # 'models:' with every entry commented out

    @model_validator(mode="after")
    def _unique_names(self) -> "Zoo":
        names = [m.name for m in self.models]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"model name {dup!r} appears twice; names must be unique")
        return self


@functools.cache
def _backbone_params(arch: str, kwargs_json: str) -> int:
    with torch.device("meta"):   # shapes only: no memory, no initialisation cost
        model = build_model(arch, num_classes=1, **json.loads(kwargs_json))
    head = model.classifier_name + "."
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(head))


def backbone_params(arch: str, arch_kwargs: dict[str, Any] | None = None) -> int:
    """Parameters of `arch` without its classifier (the part that transfers)."""
    return _backbone_params(arch, json.dumps(arch_kwargs or {}, sort_keys=True))


def load_zoo(path: str | Path) -> list[ZooEntry]:
    """Validated zoo entries, paths made relative to the zoo file, sizes filled in."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: zoo file not found; create it like configs/zoo.yaml or pass --model CKPT")
    zoo = validate(read_yaml(path), Zoo, source=str(path))
    out = []
    for entry in zoo.models:
        file = Path(entry.path).expanduser()
        file = file if file.is_absolute() else path.parent / file
        out.append(entry.model_copy(update={"path": str(file),
                                            "params": entry.params or backbone_params(entry.arch, entry.arch_kwargs)}))
    return out


def empty_zoo_message(path: str | Path) -> str:
    return (f"{path} lists no models; add one entry per upstream checkpoint you have under 'models:', e.g. "
            "'- {name: acdc_resnet50_90, path: ckpts/acdc_resnet50_90.pth, arch: resnet50, sparsity: 0.9}' "
            f"(fields are explained at the top of {path}), or pass --model CKPT")


# ---------------------------------------------------------------- optim level -> model


Size = Literal["largest", "medium", "smallest"]


@dataclass(frozen=True)
class OptimTarget:
    """What an optim level asks for: a dense or pruned model, INT8 or not, and which size."""

    level: float
    pruned: bool
    int8: bool
    size: Size

    def describe(self) -> str:
        kind = "pruned" if self.pruned else "dense"
        return f"the {self.size} {kind} model" + (" + INT8" if self.int8 else ", fp32 (no optimizations)")


def optim_target(level: float) -> OptimTarget:
    """Sparsify's documented thresholds: 0 | < 0.25 | < 0.5 | < 0.75 | <= 1."""
    if not 0.0 <= level <= 1.0:
        raise UserError(f"--optim-level must be in [0, 1], got {level}")
    if level == 0.0:
        return OptimTarget(level, pruned=False, int8=False, size="largest")
    if level < 0.25:
        return OptimTarget(level, pruned=False, int8=True, size="largest")
    if level < 0.5:
        return OptimTarget(level, pruned=True, int8=True, size="largest")
    if level < 0.75:
        return OptimTarget(level, pruned=True, int8=True, size="medium")
    return OptimTarget(level, pruned=True, int8=True, size="smallest")


@dataclass(frozen=True)
class Selection:
    entry: ZooEntry
    target: OptimTarget
    note: str | None = None


def rank_by_size(entries: Sequence[ZooEntry], size: Size) -> ZooEntry:
    """Largest / upper-median / smallest by nonzero parameters (then parameters, then name)."""
    ordered = sorted(entries, key=lambda e: (e.nonzero_params, e.params, e.name))
    return {"largest": ordered[-1], "medium": ordered[len(ordered) // 2], "smallest": ordered[0]}[size]


def select_model(entries: Sequence[ZooEntry], level: float, *, zoo_path: str | Path = "the zoo") -> Selection:
    """The zoo entry optim level `level` asks for; without a dense/pruned one, the other kind (with a note)."""
    target = optim_target(level)
    if not entries:
        raise UserError(empty_zoo_message(zoo_path))
    pool = [e for e in entries if e.pruned == target.pruned]
    note = None
    if not pool:
        pool = list(entries)
        have, want = ("dense", "pruned") if target.pruned else ("pruned", "dense")
        note = (f"{zoo_path} has no {want} model for optim-level {level:g}, which asks for {target.describe()}; "
                f"using the {target.size} {have} model instead")
    preferred = [e for e in pool if e.quantized == target.int8]
    chosen = rank_by_size(preferred or pool, target.size)
    if note:
        note += f" ({chosen.name})"
    return Selection(entry=chosen, target=target, note=note)


# ---------------------------------------------------------------- the run


class SparseTransferOptions(StrictModel):
    """What sparse_transfer.py's flags say about one run."""

    use_case: str
    data: str
    model: str | None = None                  # a checkpoint instead of the zoo's choice
    flavour: str | None = None                # its flavour (auto-detected when omitted)
    optim_level: float = 0.5
    recipe: str | None = None                 # default: RECIPE_INT8 or RECIPE_FP32 by the level
    recipe_args: str | None = None
    zoo: str = str(DEFAULT_ZOO)
    out: str | None = None                    # the run directory
    config_path: str = str(DEFAULT_TRAINER)   # trainer config: with a recipe it only names the optimizer
    batch_size: int | None = Field(default=None, gt=0)
    image_size: int | None = Field(default=None, gt=0)
    workers: int = Field(default=4, ge=0)
    seed: int = 0
    cpu: bool = False
    resume: bool = False
    progress: bool = True
    latency_batch_size: int = Field(default=1, gt=0)
    latency_warmup: int = Field(default=3, ge=0)
    latency_runs: int = Field(default=20, gt=0)


def check_data(case: UseCase, path: str | Path, **kwargs: Any):
    """The use case's datasets read from `path` (the tree is validated); errors name --data."""
    from utils.datasets import load_datasets

    try:
        return load_datasets(case.dataset, path, **kwargs)
    except UserError as err:
        raise UserError(f"--data: {err}") from None


def entry_from_checkpoint(path: str, flavour: str | None) -> ZooEntry:
    """A zoo entry describing `--model CKPT` (architecture and sparsity read from the file)."""
    from utils.checkpoints import load_checkpoint

    if not Path(path).is_file():
        raise UserError(f"--model {path}: checkpoint not found")
    loaded = load_checkpoint(path, flavour=flavour)
    quantized = bool(((loaded.header or {}).get("extra") or {}).get("quantization"))
    return ZooEntry(name=Path(path).stem, path=str(path), flavour=flavour, arch=loaded.arch,
                    arch_kwargs=dict(loaded.arch_kwargs), sparsity=min(loaded.report.global_sparsity, 0.999999),
                    quantized=quantized, params=backbone_params(loaded.arch, dict(loaded.arch_kwargs)))


def choose_recipe(recipe: str | None, recipe_args: str | None, *, int8: bool) -> tuple[str, str | None]:
    """The recipe to run (parsed now, so a bad one fails before training) and a note if it disagrees with INT8."""
    from policies.recipe import load_recipe

    path = recipe or str(RECIPE_INT8 if int8 else RECIPE_FP32)
    has_qat = any(spec.type == "QuantizationModifier" for _, _, spec in load_recipe(path, recipe_args).modifiers)
    if has_qat == int8:
        return path, None
    what = "asks for INT8 but the recipe has no QuantizationModifier" if int8 else \
        "asks for fp32 but the recipe quantizes"
    return path, f"the optim level {what}; following the recipe {path}"


def dense_reference_entry(entries: Sequence[ZooEntry]) -> ZooEntry | None:
    """The zoo's largest dense model (the latency baseline), if it has one."""
    dense = [e for e in entries if not e.pruned]
    return max(dense, key=lambda e: (e.params, e.name)) if dense else None


def require_file(entry: ZooEntry, zoo: str) -> None:
    if not Path(entry.path).is_file():
        raise UserError(f"{zoo}: model {entry.name!r}: checkpoint {entry.path} not found; fix its 'path' "
                        "(a relative path is relative to the zoo file)")


def export_dense_reference(ref: ZooEntry | None, chosen: ZooEntry, *, num_classes: int, path: Path,
                           image_size: int) -> str:
    """fp32 ONNX of the dense baseline (the zoo's, else `chosen`'s architecture dense-initialised); its label."""
    from utils.checkpoints import load_checkpoint
    from utils.export import export_onnx

    if ref is not None:
        model, label = load_checkpoint(ref.path, flavour=ref.flavour, num_classes=num_classes).model, ref.name
    else:  # dense ONNX Runtime latency does not depend on the weights' values
        model = build_model(chosen.arch, num_classes=num_classes, **chosen.arch_kwargs)
        label = f"{chosen.arch} dense (initialised; the zoo has no dense model)"
    export_onnx(model, path, input_size=image_size)
    return label


def onnx_latency_ms(paths: dict[str, Path | str], batch: torch.Tensor, *, warmup: int, runs: int) -> dict[str, float]:
    """Median wall time (ms) of one ONNX Runtime CPU call per model on `batch`; the models take turns,
    so machine drift hits them alike."""
    import statistics
    import time

    from utils.export import onnx_session

    sessions = {k: onnx_session(p) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: batch.numpy()} for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for i in range(warmup + runs):
        for k, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[k])
            if i >= warmup:
                times[k].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def sample_inputs(case: UseCase, data: str, run_config: dict, *, count: int = 64) -> torch.Tensor:
    """The first `count` test images, transformed as the run evaluated them."""
    norm = run_config["checkpoint"]["normalization"]
    mean, std = (None, None) if norm == "dataset" else (norm["mean"], norm["std"])
    splits = check_data(case, data, image_size=run_config["dataset"]["image_size"],
                        interpolation=run_config["checkpoint"]["interpolation"], mean=mean, std=std, augment=False)
    return torch.stack([splits.test[i][0] for i in range(min(count, len(splits.test)))])


def default_run_dir(data: str, entry: ZooEntry, level: float, seed: int) -> Path:
    return Path("experiments") / "sparse_transfer" / f"{Path(data).name}_{entry.name}_optim{level:g}_seed{seed}"


def pick_model(opts: SparseTransferOptions, target: OptimTarget) -> tuple[Selection, list[ZooEntry]]:
    """The zoo's choice for the level (or --model as given, with a note if it disagrees) and the zoo entries."""
    entries = load_zoo(opts.zoo) if opts.model is None or Path(opts.zoo).is_file() else []
    if opts.model is None:
        return select_model(entries, opts.optim_level, zoo_path=opts.zoo), entries
    given = entry_from_checkpoint(opts.model, opts.flavour)
    note = None
    if given.pruned != target.pruned:
        note = (f"--model {opts.model} is {'pruned' if given.pruned else 'dense'} but optim-level "
                f"{opts.optim_level:g} asks for {target.describe()}; using it as given")
    return Selection(given, target, note), entries


def time_deployment(export: dict[str, Any], dense_onnx: Path, inputs: torch.Tensor, *, opts: SparseTransferOptions,
                    reference_label: str) -> dict[str, Any]:
    """ONNX Runtime latency of the deployed model (INT8 if any, and its fp32 twin) vs the dense reference."""
    size = opts.latency_batch_size
    batch = inputs.repeat(-(-size // len(inputs)), 1, 1, 1)[:size]   # repeats images only if there are too few
    deployed = export.get("int8") or export["fp32"]
    models = {"model": deployed["path"], "dense": dense_onnx}
    if "int8" in export:   # fp32 sparse vs dense shows what sparsity alone buys in ONNX Runtime
        models["model_fp32"] = export["fp32"]["path"]
    timed = onnx_latency_ms(models, batch, warmup=opts.latency_warmup, runs=opts.latency_runs)
    return {"batch_size": size, "warmup": opts.latency_warmup, "runs": opts.latency_runs,
            "model_onnx": deployed["path"], "dense_reference": reference_label,
            **{f"{k}_ms": v for k, v in timed.items()}, "speedup_vs_dense": timed["dense"] / timed["model"]}


def run_sparse_transfer(opts: SparseTransferOptions) -> dict[str, Any]:
    """Select (or take) a model, fine-tune it with the recipe, export ONNX, time it; returns the summary."""
    from utils.experiment import RunOptions
    from utils.export import export_checkpoint
    from utils.finetune import run_full_finetuning

    case = resolve_use_case(opts.use_case)
    target = optim_target(opts.optim_level)
    data = check_data(case, opts.data)
    selection, entries = pick_model(opts, target)
    chosen, reference = selection.entry, dense_reference_entry(entries)
    for entry in filter(None, (chosen, reference)):   # fail now, not after training
        require_file(entry, opts.zoo)
    recipe, recipe_note = choose_recipe(opts.recipe, opts.recipe_args, int8=target.int8)
    notes = [n for n in (selection.note, recipe_note) if n]
    for note in notes:
        log.warning(note)
    log.info("optim-level %g: %s -> %s (%s)", opts.optim_level, target.describe(), chosen.name, chosen.path)

    run_dir = Path(opts.out) if opts.out else default_run_dir(opts.data, chosen, opts.optim_level, opts.seed)
    if (run_dir / "result.json").exists() and not opts.resume:
        raise UserError(f"{run_dir} already holds a finished run; pass --resume to re-export and re-summarise it, "
                        "or choose another --out")
    result = run_full_finetuning(RunOptions(
        dset=case.dataset, dset_path=opts.data, config_path=opts.config_path, from_checkpoint_path=chosen.path,
        checkpoint_flavour=chosen.flavour, recipe=recipe, recipe_args=opts.recipe_args,
        experiment_root_path=str(run_dir.parent), exp_name=run_dir.name, batch_size=opts.batch_size,
        image_size=opts.image_size, workers=opts.workers, manual_seed=opts.seed, cpu=opts.cpu,
        resume=opts.resume, progress=opts.progress, model_label=f"sparse transfer (optim {opts.optim_level:g})"))

    run_config = read_yaml(run_dir / "config.yaml")
    image_size = run_config["dataset"]["image_size"]
    inputs = sample_inputs(case, opts.data, run_config)
    export = export_checkpoint(run_dir / "model.pt", run_dir / "export", image_size=image_size, inputs=inputs)
    dense_onnx = run_dir / "export" / "dense_reference_fp32.onnx"
    label = export_dense_reference(reference, chosen, num_classes=data.num_classes, image_size=image_size,
                                   path=dense_onnx)
    summary = {
        "use_case": case.name, "data": str(opts.data), "num_classes": data.num_classes,
        "optim_level": opts.optim_level, "target": target.describe(),
        "model": {**chosen.model_dump(exclude={"params"}), "backbone_params": chosen.params},
        "notes": notes, "recipe": recipe, "recipe_args": opts.recipe_args, "epochs": result.get("epochs"),
        "accuracy": result["val_acc"], "sparsity": result["measured_sparsity"],
        "upstream_sparsity": run_config["derived"]["loaded_sparsity"], "int8": "int8" in export,
        "sizes": {"onnx_fp32_bytes": export["fp32"]["bytes"],
                  "onnx_int8_bytes": export["int8"]["bytes"] if "int8" in export else None,
                  "checkpoint_dense_bytes": export["size"]["dense_bytes"],
                  "checkpoint_compressed_bytes": export["size"]["compressed_bytes"],
                  "dense_reference_onnx_bytes": dense_onnx.stat().st_size},
        "latency": time_deployment(export, dense_onnx, inputs, opts=opts, reference_label=label),
        "onnx_checks": {k: {m: export[k][m] for m in ("max_abs_diff", "top1_agreement", "num_samples")}
                        for k in ("fp32", "int8") if k in export},
        "run_dir": str(run_dir),
    }
    write_summary(run_dir, summary)
    return summary


def summary_markdown(s: dict[str, Any]) -> str:
    """The summary as a short Markdown report."""
    mb = lambda n: "-" if n is None else f"{n / 1e6:.2f} MB"  # noqa: E731
    lat, sizes = s["latency"], s["sizes"]
    lines = [f"# Sparse transfer: {s['model']['name']} -> {Path(s['data']).name}", "",
             f"- use case: {s['use_case']}; optim-level {s['optim_level']:g}: {s['target']}",
             f"- upstream: `{s['model']['path']}` ({s['model']['arch']}, sparsity {s['upstream_sparsity']:.4f})",
             f"- recipe: `{s['recipe']}`" + (f" with `{s['recipe_args']}`" if s["recipe_args"] else ""),
             *[f"- note: {n}" for n in s["notes"]], "",
             "| metric | value |", "|---|---|",
             f"| accuracy (test split) | {s['accuracy']:.4f} |",
             f"| sparsity (conv/linear weights, classifier excluded) | {s['sparsity']:.4f} |",
             f"| INT8 | {'yes' if s['int8'] else 'no'} |",
             f"| ONNX fp32 / INT8 | {mb(sizes['onnx_fp32_bytes'])} / {mb(sizes['onnx_int8_bytes'])} |",
             f"| checkpoint dense / bitmask+nonzeros | {mb(sizes['checkpoint_dense_bytes'])} / "
             f"{mb(sizes['checkpoint_compressed_bytes'])} |",
             f"| ONNX Runtime latency, batch {lat['batch_size']} (median of {lat['runs']}) | "
             f"{lat['model_ms']:.3f} ms vs {lat['dense_ms']:.3f} ms dense ({lat['dense_reference']}) |",
             *([f"| ... the same model in fp32 (sparsity alone) | {lat['model_fp32_ms']:.3f} ms |"]
               if "model_fp32_ms" in lat else []),
             f"| speed-up vs dense | {lat['speedup_vs_dense']:.2f}x |", "",
             f"Run directory: `{s['run_dir']}`; ONNX: `{lat['model_onnx']}`."]
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    from utils.io import atomic_write_json, atomic_write_text

    atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_text(run_dir / "summary.md", summary_markdown(summary))

"""The sparse-transfer run behind `sparse_transfer.py`: select, fine-tune with a recipe, export, summarise.

Model selection lives in `utils.sparsify.use_cases`, `.zoo` and `.optim`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import Field

from models import build_model
from policies.recipe.load import load_recipe
from utils.checkpoints import load_checkpoint
from utils.cli import quietly
from utils.config import MIN_IMAGE_SIZE, StrictModel
from utils.data import DatasetSplits
from utils.deploy import export_checkpoint, export_onnx
from utils.errors import UserError
from utils.io import atomic_write_json, atomic_write_text
from utils.onnx.engines import available_engines, engines_latency_ms, missing
from utils.paths import RECIPE_DIR, TRAINER_DIR
from utils.runs import RUNS, InputSettings, RunResult, checkpoint_label
from utils.sparsify.optim import OptimTarget, Selection, optim_target, select_model
from utils.sparsify.use_cases import UseCase, resolve_use_case
from utils.sparsify.zoo import ZooEntry, backbone_params, default_zoo_path, load_zoo
from utils.tasks import TASKS, task, task_of

log = logging.getLogger(__name__)
# what says "loaded ..." when data or a checkpoint is read: quiet when this command reads them a second time
DATA_LOGGERS = ("utils.data", "utils.detection")
CHECKPOINT_LOGGERS = ("utils.checkpoints",)


DEFAULT_TRAINER = TRAINER_DIR / "study_full_lr001.yaml"   # with a recipe it only names the optimizer
RECIPE_INT8 = RECIPE_DIR / "sparse_transfer_resnet50.yaml"
RECIPE_FP32 = RECIPE_DIR / "sparse_transfer_fp32.yaml"


class SparseTransferOptions(StrictModel):
    """What sparse_transfer.py's flags say about one run."""

    use_case: str
    data: str
    model: str | None = None                  # a checkpoint instead of the zoo's choice
    flavour: str | None = None                # its flavour (auto-detected when omitted)
    optim_level: float = 0.5
    recipe: str | None = None                 # default: RECIPE_INT8 or RECIPE_FP32 by the level
    recipe_args: str | None = None
    zoo: str = Field(default_factory=lambda: str(default_zoo_path()))   # $SPARSE_TRANSFER_ZOO or configs/zoo.yaml
    out: str | None = None                    # the run directory
    config_path: str | None = None            # trainer config (default: the use case's); with a recipe it only
                                              # names the optimizer
    batch_size: int | None = Field(default=None, gt=0)
    accumulate_steps: int | None = Field(default=None, gt=0)   # gradient accumulation (default: the config's)
    image_size: int | None = Field(default=None, ge=MIN_IMAGE_SIZE)   # smaller leaves no image to resize
    workers: int = Field(default=4, ge=0)
    seed: int = 0
    cpu: bool = False
    resume: bool = False
    progress: bool = True
    latency_batch_size: int = Field(default=1, gt=0)
    latency_warmup: int = Field(default=3, ge=0)
    latency_runs: int = Field(default=20, gt=0)
    engine: str | None = None                 # the inference engine of the summary (default: the fastest installed)


def check_data(case: UseCase, path: str | Path, **kwargs: Any) -> DatasetSplits:
    """The use case's datasets read from `path` (the tree is validated); errors name --data."""
    try:
        return TASKS.get(case.task).load_splits(case.dataset, str(path), **kwargs)
    except UserError as err:
        raise UserError(f"--data: {err}") from None


def entry_from_checkpoint(path: str, flavour: str | None) -> ZooEntry:
    """A zoo entry describing `--model CKPT` (architecture and sparsity read from the file)."""
    if not Path(path).is_file():
        raise UserError(f"--model {path}: checkpoint not found")
    loaded = load_checkpoint(path, flavour=flavour)
    quantized = bool(loaded.extra.get("quantization"))
    return ZooEntry(name=checkpoint_label(path), path=str(path), flavour=flavour, arch=loaded.arch,
                    arch_kwargs=dict(loaded.arch_kwargs), sparsity=min(loaded.report.global_sparsity, 0.999999),
                    quantized=quantized, params=backbone_params(loaded.arch, dict(loaded.arch_kwargs)))


def choose_recipe(recipe: str | None, recipe_args: str | None, *, int8: bool,
                  case: UseCase | None = None) -> tuple[str, str | None]:
    """The recipe to run (parsed now, so a bad one fails before training) and a note if it disagrees with INT8."""
    defaults = (RECIPE_DIR / case.recipes[0], RECIPE_DIR / case.recipes[1]) if case and case.recipes \
        else (RECIPE_INT8, RECIPE_FP32)
    path = recipe or str(defaults[0] if int8 else defaults[1])
    # parsed now to fail early; the run parses it again and says what it set (its warnings too)
    with quietly("policies.recipe", level=logging.ERROR):
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
    if ref is not None:
        model, label = load_checkpoint(ref.path, flavour=ref.flavour, num_classes=num_classes).model, ref.name
    else:  # dense ONNX Runtime latency does not depend on the weights' values
        model = build_model(chosen.arch, num_classes=num_classes, **chosen.arch_kwargs)
        label = f"{chosen.arch} dense (initialised; the zoo has no dense model)"
    export_onnx(model, path, input_size=image_size)
    return label


def sample_inputs(case: UseCase, data: str, inputs: InputSettings, *, count: int = 64) -> torch.Tensor:
    """The first `count` test images, transformed as the run evaluated them."""
    mean, std = inputs.mean_std()
    with quietly(*DATA_LOGGERS):          # the run logged this data already
        splits = check_data(case, data, image_size=inputs.image_size, interpolation=inputs.interpolation, mean=mean,
                            std=std, augment=False)     # a detector's val split is never augmented
    return torch.stack([splits.test[i][0] for i in range(min(count, len(splits.test)))])


def default_run_dir(data: str, entry: ZooEntry, level: float, seed: int) -> Path:
    name = Path(data).parent.name if Path(data).suffix in (".yaml", ".yml") else Path(data).name
    return Path("experiments") / "sparse_transfer" / f"{name}_{entry.name}_optim{level:g}_seed{seed}"


TASK_EXAMPLES = {"detection": "{name: yolov5s_pruned75, path: ckpts/yolov5s_pruned75.pt, arch: yolov5s, "
                              "sparsity: 0.75}",
                 "classification": "{name: acdc_resnet50_90, path: ckpts/acdc_resnet50_90.pth, arch: resnet50, "
                                   "sparsity: 0.9}"}


def pick_model(opts: SparseTransferOptions, target: OptimTarget,
               case: UseCase) -> tuple[Selection, list[ZooEntry]]:
    """The zoo's choice for the level among the use case's models (or --model as given, with a note if it
    disagrees) and those zoo entries."""
    listed = load_zoo(opts.zoo) if opts.model is None or Path(opts.zoo).is_file() else []
    entries = [e for e in listed if task_of(arch=e.arch) == case.task]
    if opts.model is None and listed and not entries:
        others = sorted({task_of(arch=e.arch) for e in listed})
        raise UserError(f"{opts.zoo} has no {case.task} model for --use-case {opts.use_case} (it lists {len(listed)} "
                        f"{'/'.join(others)} model(s)); add one under 'models:', e.g. '- {TASK_EXAMPLES[case.task]}', "
                        "or pass --model CKPT")
    if opts.model is None:
        return select_model(entries, opts.optim_level, zoo_path=opts.zoo), entries
    with quietly(*CHECKPOINT_LOGGERS):    # read for its architecture and sparsity; the run reads it and says so
        given = entry_from_checkpoint(opts.model, opts.flavour)
    if task_of(arch=given.arch) != case.task:
        raise UserError(f"--model {opts.model} is a {task_of(arch=given.arch)} model ({given.arch}); the use case "
                        f"{case.name} needs a {case.task} model")
    note = None
    if given.pruned != target.pruned:
        note = (f"--model {opts.model} is {'pruned' if given.pruned else 'dense'} but optim-level "
                f"{opts.optim_level:g} asks for {target.describe()}; using it as given")
    return Selection(given, target, note), entries


def time_deployment(export: dict[str, Any], dense_onnx: Path, inputs: torch.Tensor, *, opts: SparseTransferOptions,
                    reference_label: str) -> dict[str, Any]:
    """Latency of the deployed model (INT8 if any, and its fp32 twin) vs the dense reference, in every installed
    engine taking turns (or --engine alone); the summary's numbers are the engine that runs the model fastest."""
    size = opts.latency_batch_size
    batch = inputs.repeat(-(-size // len(inputs)), 1, 1, 1)[:size]   # repeats images only if there are too few
    deployed = export.get("int8") or export["fp32"]
    models = {"model": deployed["path"], "dense": dense_onnx}
    if "int8" in export:   # fp32 sparse vs dense shows what sparsity alone buys
        models["model_fp32"] = export["fp32"]["path"]
    engines = [opts.engine] if opts.engine else available_engines()
    timed, used = engines_latency_ms(models, batch.numpy(), engines, warmup=opts.latency_warmup,
                                     runs=opts.latency_runs)
    engine = min(timed, key=lambda e: timed[e]["model"])
    why = "--engine" if opts.engine else f"the fastest of {', '.join(engines)} on this model"
    return {"batch_size": size, "warmup": opts.latency_warmup, "runs": opts.latency_runs,
            "model_onnx": deployed["path"], "dense_reference": reference_label, "engine": engine, "engine_why": why,
            "precision": used[engine]["model"], **{f"{k}_ms": v for k, v in timed[engine].items()},
            "speedup_vs_dense": timed[engine]["dense"] / timed[engine]["model"],
            "by_engine": {e: {**{f"{k}_ms": v for k, v in t.items()}, "precision": used[e]["model"]}
                          for e, t in timed.items()}}


def run_sparse_transfer(opts: SparseTransferOptions) -> dict[str, Any]:
    """Select (or take) a model, fine-tune it with the recipe, export ONNX, time it; returns the summary."""
    case = resolve_use_case(opts.use_case)
    target = optim_target(opts.optim_level)
    with quietly(*DATA_LOGGERS):          # checked before training; the run loads it and says what it found
        data = check_data(case, opts.data)
    selection, entries = pick_model(opts, target, case)
    chosen, reference = selection.entry, dense_reference_entry(entries)
    for entry in filter(None, (chosen, reference)):   # fail now, not after training
        require_file(entry, opts.zoo)
    if opts.engine and (why := missing(opts.engine)):         # fail now, not after training
        raise UserError(f"--engine {opts.engine}: {why}")
    recipe, recipe_note = choose_recipe(opts.recipe, opts.recipe_args, int8=target.int8, case=case)
    notes = [n for n in (selection.note, recipe_note) if n]
    for note in notes:
        log.warning(note)
    if opts.model:       # the user's checkpoint: the level only decides the recipe (fp32 or INT8), not the model
        log.info("--model %s (%s); optim-level %g: %s", chosen.path, chosen.arch, opts.optim_level,
                 "INT8 (QAT)" if target.int8 else "fp32")
    else:
        log.info("optim-level %g: %s -> %s (%s)", opts.optim_level, target.describe(), chosen.name, chosen.path)
    run_dir = Path(opts.out) if opts.out else default_run_dir(opts.data, chosen, opts.optim_level, opts.seed)
    if (run_dir / "result.json").exists() and not opts.resume:
        raise UserError(f"{run_dir} already holds a finished run; pass --resume to re-export and re-summarise it, "
                        "or choose another --out")
    result = transfer(opts, case=case, chosen=chosen, recipe=recipe, run_dir=run_dir)
    samples = sample_inputs(case, opts.data, result.input)
    with quietly(*CHECKPOINT_LOGGERS):    # the run's own model.pt, no news
        export = export_checkpoint(run_dir / "model.pt", run_dir / "export", image_size=result.input.image_size,
                                   inputs=samples)
    dense_onnx = run_dir / "export" / "dense_reference_fp32.onnx"
    label = export_dense_reference(reference, chosen, num_classes=data.num_classes, path=dense_onnx,
                                   image_size=result.input.image_size)
    summary = {
        "use_case": case.name, "data": str(opts.data), "num_classes": data.num_classes,
        "optim_level": opts.optim_level, "target": target.describe(),
        "model": {**chosen.model_dump(exclude={"params"}), "backbone_params": chosen.params},
        "notes": notes, "recipe": recipe, "recipe_args": opts.recipe_args, "epochs": result.record.get("epochs"),
        **score(result), "sparsity": result.measured_sparsity,
        "upstream_sparsity": result.record["loaded_sparsity"], "int8": "int8" in export,
        "sizes": deployment_sizes(export, dense_onnx),
        "latency": time_deployment(export, dense_onnx, samples, opts=opts, reference_label=label),
        "onnx_checks": {k: onnx_check(export[k]) for k in ("fp32", "int8") if k in export},
        "dataset": result.record["dset"], "method": result.record["model"], "run_dir": str(run_dir),
        "results_csv": str(run_dir.parent / "results.csv"),
    }
    if "accuracy" in summary and (note := chance_note(summary["accuracy"], data.num_classes)):
        summary["notes"].append(note)
    write_summary(run_dir, summary)
    return summary


def chance_note(accuracy: float, num_classes: int) -> str | None:
    """A note when a classifier's accuracy is within 1.5x of guessing: a summary must not read as a success then."""
    chance = 1.0 / max(num_classes, 1)
    if accuracy > 1.5 * chance:
        return None
    return (f"accuracy {accuracy:.4f} is near chance ({chance:.4f} for {num_classes} classes): the transfer did not "
            "learn; check the data and labels, or train longer (--recipe_args num_epochs)")


def onnx_check(report: dict[str, Any]) -> dict[str, Any]:
    """An exported file's agreement with torch: top-1 for a classifier, box agreement for a detector (named so)."""
    kind = "box_agreement" if "box_agreement" in report else "top1_agreement"
    return {"max_abs_diff": report["max_abs_diff"], kind: report[kind], "num_samples": report["num_samples"]}


def score(result: RunResult) -> dict[str, Any]:
    """The summary's quality figures: a classifier's accuracy, a detector's mAP@0.5:0.95 and mAP@0.5."""
    return task(record=result.record).summary(result.record)


def transfer(opts: SparseTransferOptions, *, case: UseCase, chosen: ZooEntry, recipe: str, run_dir: Path) -> RunResult:
    """Full fine-tuning of the chosen upstream with the recipe, every zero kept (a finished run is reused)."""
    if not opts.resume and (run_dir / "checkpoint.pt").exists():    # (a finished one is refused before)
        raise UserError(f"{run_dir} holds an unfinished transfer (checkpoint.pt); pass --resume to continue it, or "
                        "choose another --out")
    kind = RUNS.get("full")
    result = kind.run(kind.options(
        dataset=case.dataset, dataset_path=opts.data,
        trainer_config_path=opts.config_path or str(TRAINER_DIR / case.trainer if case.trainer else DEFAULT_TRAINER),
        from_checkpoint_path=chosen.path, checkpoint_flavour=chosen.flavour, recipe=recipe,
        recipe_args=opts.recipe_args, experiment_root_path=str(run_dir.parent), exp_name=run_dir.name,
        batch_size=opts.batch_size, accumulate_steps=opts.accumulate_steps, image_size=opts.image_size,
        workers=opts.workers, seed=opts.seed, cpu=opts.cpu,
        resume=opts.resume, progress=opts.progress))    # results' method: the upstream's (or the recipe's pruning)
    if result.input is None or "loaded_sparsity" not in result.record:
        raise UserError(f"{run_dir} was recorded by an older version of this code, which did not keep the run's "
                        "input settings; choose another --out to run the transfer again")
    return result


def deployment_sizes(export: dict[str, Any], dense_onnx: Path) -> dict[str, int | None]:
    return {"onnx_fp32_bytes": export["fp32"]["bytes"],
            "onnx_int8_bytes": export["int8"]["bytes"] if "int8" in export else None,
            "checkpoint_dense_bytes": export["size"]["dense_bytes"],
            "checkpoint_compressed_bytes": export["size"]["compressed_bytes"],
            "dense_reference_onnx_bytes": dense_onnx.stat().st_size}


def summary_markdown(s: dict[str, Any]) -> str:
    """The summary as a short Markdown report."""
    mb = lambda n: "-" if n is None else f"{n / 1e6:.2f} MB"  # noqa: E731
    lat, sizes = s["latency"], s["sizes"]
    checks = s.get("onnx_checks", {})
    lines = [f"# Sparse transfer: {s['model']['name']} -> {s.get('dataset', Path(s['data']).name)}", "",
             f"- use case: {s['use_case']}; optim-level {s['optim_level']:g}: {s['target']}",
             f"- upstream: `{s['model']['path']}` ({s['model']['arch']}, sparsity {s['upstream_sparsity']:.4f})",
             *([f"- method: {s['method']} (results.csv's `model`: the upstream's, or the pruning its recipe applied)"]
               if "method" in s else []),
             f"- recipe: `{s['recipe']}`" + (f" with `{s['recipe_args']}`" if s["recipe_args"] else ""),
             *[f"- note: {n}" for n in s["notes"]], "",
             "| metric | value |", "|---|---|",
             *([f"| accuracy (test split) | {s['accuracy']:.4f} |"] if "accuracy" in s else
               [f"| mAP@0.5:0.95 / mAP@0.5 (val split) | {s['map']:.4f} / {s['map50']:.4f} |"]),
             f"| sparsity (conv/linear weights, classifier excluded) | {s['sparsity']:.4f} |",
             f"| INT8 | {'yes' if s['int8'] else 'no'} |",
             f"| ONNX fp32 / INT8 | {mb(sizes['onnx_fp32_bytes'])} / {mb(sizes['onnx_int8_bytes'])} |",
             *[f"| ONNX {k} vs torch ({c['num_samples']} inputs) | max abs diff {c['max_abs_diff']:.3g}, "
               + (f"box agreement {c['box_agreement']:.2%}" if "box_agreement" in c else
                  f"top-1 agreement {c['top1_agreement']:.2%}") + " |" for k, c in checks.items()],
             f"| checkpoint dense / bitmask+nonzeros | {mb(sizes['checkpoint_dense_bytes'])} / "
             f"{mb(sizes['checkpoint_compressed_bytes'])} |",
             f"| latency in {lat.get('engine', 'onnxruntime')} ({lat.get('precision', 'fp32')}), batch "
             f"{lat['batch_size']} (median of {lat['runs']}) | "
             f"{lat['model_ms']:.3f} ms vs {lat['dense_ms']:.3f} ms dense ({lat['dense_reference']}) |",
             *([f"| ... the same model in fp32 (sparsity alone) | {lat['model_fp32_ms']:.3f} ms |"]
               if "model_fp32_ms" in lat else []),
             f"| speed-up vs dense | {lat['speedup_vs_dense']:.2f}x |",
             *[f"| ... in {e} ({t['precision']}) | {t['model_ms']:.3f} ms vs {t['dense_ms']:.3f} ms dense |"
               for e, t in lat.get("by_engine", {}).items() if e != lat.get("engine")], "",
             f"Engine: {lat.get('engine', 'onnxruntime')} ({lat.get('engine_why', '')}).", "",
             f"Run directory: `{s['run_dir']}`; ONNX: `{lat['model_onnx']}`"
             + (f"; its row in `{s['results_csv']}`." if "results_csv" in s else ".")]
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(run_dir / "summary.json", summary)
    atomic_write_text(run_dir / "summary.md", summary_markdown(summary))

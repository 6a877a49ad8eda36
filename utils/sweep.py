"""Run a study: make its upstream checkpoints, expand the grid, skip finished cells, run the rest.

Every cell is a normal run directory under the study's experiment root; a cell is finished when its
`result.json` exists and failed when only its `error.json` does. A failure is recorded and the sweep
goes on; killing the sweep loses at most the epoch in progress (cells resume from their checkpoint).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from utils.checkpoints import file_sha256
from utils.errors import UserError
from utils.io import atomic_write_json, read_json
from utils.study import Cell, DatasetEntry, Study, UpstreamSpec, cell_key

log = logging.getLogger(__name__)


def upstream_order(study: Study) -> list[UpstreamSpec]:
    """Upstreams sorted so that each comes after the one it is made from."""
    by_name = {u.name: u for u in study.upstreams}
    ordered: list[UpstreamSpec] = []

    def visit(u: UpstreamSpec, chain: tuple[str, ...]) -> None:
        if u in ordered:
            return
        if u.name in chain:
            raise UserError(f"study {study.name!r}: upstreams form a cycle: {' -> '.join(chain + (u.name,))}")
        if u.produce and u.produce.from_upstream:
            visit(by_name[u.produce.from_upstream], chain + (u.name,))
        ordered.append(u)

    for u in study.upstreams:
        visit(u, ())
    return ordered


def produce_key(u: UpstreamSpec, source_sha: str | None) -> str:
    from utils.study import file_text_hash

    spec = u.produce.model_dump()
    files = {k: file_text_hash(spec[k]) for k in ("config_path", "recipe") if spec.get(k)}
    payload = json.dumps({"spec": spec, "files": files, "source": source_sha}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def produce_upstream(u: UpstreamSpec, *, root: Path, source: Path | None, options: dict[str, Any]) -> Path:
    """Make one upstream checkpoint (or find it already made); returns its path."""
    from utils.experiment import RunOptions
    from utils.finetune import run_full_finetuning
    from utils.prune import prune_checkpoint

    p = u.produce
    key = produce_key(u, file_sha256(source) if source else None)
    if p.oneshot_sparsity is not None:
        out = root / "upstream" / f"{u.name}_{key}.pt"
        if not out.exists():
            prune_checkpoint(source, out, sparsity=p.oneshot_sparsity)
        return out
    run_name = f"{u.name}_{key}"
    out = root / "upstream" / run_name / "model.pt"
    if out.exists() and (out.parent / "result.json").exists():
        return out
    values = {"workers": 0, **options, **p.options, "dset": p.dset, "dset_path": p.dset_path,
              "config_path": p.config_path, "arch": p.arch,
              "from_checkpoint_path": str(source) if source else None, "recipe": p.recipe,
              "recipe_args": json.dumps(p.recipe_args) if p.recipe_args else None,
              "experiment_root_path": str(root / "upstream"), "exp_name": run_name, "resume": True,
              "model_label": u.model, "sparsity_label": u.sparsity}
    run_full_finetuning(RunOptions(**{k: v for k, v in values.items() if v is not None}))
    return out


def resolve_upstreams(study: Study, *, make: bool, progress: Callable[[str], None] = print) -> dict[str, Path | None]:
    """name -> checkpoint path; produced upstreams are made when `make` (else None until they exist)."""
    root = Path(study.experiment_root)
    paths: dict[str, Path | None] = {}
    for u in upstream_order(study):
        if u.path is not None:
            path = Path(u.path)
            paths[u.name] = path if path.is_file() else None
            if paths[u.name] is None:
                progress(f"upstream {u.name}: checkpoint {path} not found (fill in the path in the study file)")
            continue
        source = paths.get(u.produce.from_upstream) if u.produce.from_upstream else None
        if u.produce.from_upstream and source is None:
            paths[u.name] = None
            continue
        if not make:
            key = produce_key(u, file_sha256(source) if source else None)
            done = (root / "upstream" / f"{u.name}_{key}.pt", root / "upstream" / f"{u.name}_{key}" / "model.pt")
            paths[u.name] = next((d for d in done if d.exists()), None)
            continue
        start = time.perf_counter()
        paths[u.name] = produce_upstream(u, root=root, source=source, options=study.options)
        progress(f"upstream {u.name}: {paths[u.name]} ({time.perf_counter() - start:.0f} s)")
    return paths


def cell_options(study: Study, *, upstream: UpstreamSpec, dataset: DatasetEntry, mode: str, seed: int,
                 checkpoint: Path) -> dict[str, Any]:
    common = {**study.options, **dataset.overrides}
    if mode == "full":
        m = study.full
        return {"workers": 0, **common, **m.options, **dataset.full_overrides, "dset": dataset.name,
                "dset_path": dataset.path, "config_path": m.config_path,
                "transfer_config_path": m.transfer_config_path, "recipe": m.recipe,
                "recipe_args": json.dumps(m.recipe_args) if m.recipe_args else None,
                "from_checkpoint_path": str(checkpoint), "checkpoint_flavour": upstream.flavour,
                "manual_seed": seed, "model_label": upstream.model, "sparsity_label": upstream.sparsity}
    m = study.linear
    return {"workers": 0, **common, **m.options, **dataset.linear_overrides, "dataset": dataset.name,
            "dataset_path": dataset.path, "solver": m.solver, "training_config_path": m.training_config_path,
            "from_checkpoint_path": str(checkpoint), "checkpoint_flavour": upstream.flavour, "seed": seed,
            "model_label": upstream.model, "sparsity_label": upstream.sparsity}


def expand(study: Study, upstream_paths: dict[str, Path | None]) -> tuple[list[Cell], list[str]]:
    """All cells whose upstream checkpoint exists, and a note per upstream that blocks its cells."""
    root = Path(study.experiment_root)
    cells, blocked = [], []
    shas: dict[str, str] = {}
    for u in study.upstreams:
        ckpt = upstream_paths.get(u.name)
        if ckpt is None:
            blocked.append(u.name)
            continue
        shas[u.name] = shas.get(u.name) or file_sha256(ckpt)
        for dataset in study.datasets:
            for mode in study.modes:
                for seed in getattr(study, mode).seeds or study.seeds:
                    opts = {k: v for k, v in cell_options(study, upstream=u, dataset=dataset, mode=mode, seed=seed,
                                                          checkpoint=ckpt).items() if v is not None}
                    key = cell_key(checkpoint_sha256=shas[u.name], dataset=dataset, mode=mode, seed=seed, options=opts)
                    name = f"{mode}/{dataset.name}/{u.name}_seed{seed}_{key[:10]}"
                    cells.append(Cell(upstream=u.name, dataset=dataset.name, mode=mode, seed=seed, options=opts,
                                      key=key, root=root, name=name))
    return cells, blocked


def cell_status(cell: Cell) -> str:
    if (cell.run_dir / "result.json").exists():
        return "done"
    if (cell.run_dir / "error.json").exists():
        return "failed"
    return "todo"


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell in this process; never raises for a cell's own failure (it is written to error.json)."""
    start = time.perf_counter()
    try:
        if cell.mode == "full":
            from utils.experiment import RunOptions
            from utils.finetune import run_full_finetuning

            opts = RunOptions(**{**cell.options, "experiment_root_path": str(cell.root), "exp_name": cell.name,
                                 "resume": True, "progress": False})
            result = run_full_finetuning(opts)
        else:
            from utils.linear import LinearOptions, run_linear_finetuning

            opts = LinearOptions(**{**cell.options, "experiment_root_path": str(cell.root), "exp_name": cell.name,
                                    "resume": True, "progress": False,
                                    "features_cache": str(cell.root / "features_cache")})
            result = run_linear_finetuning(opts)
        (cell.run_dir / "error.json").unlink(missing_ok=True)
        return {"status": "done", "val_acc": result.get("val_acc"), "seconds": time.perf_counter() - start}
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 -- one cell's failure must not stop the sweep
        if isinstance(err, KeyboardInterrupt):
            raise
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cell.run_dir / "error.json", {
            "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(), "cell": cell.label})
        return {"status": "failed", "error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - start}


def read_error(cell: Cell) -> str:
    return read_json(cell.run_dir / "error.json").get("error", "?")


def validate_cells(cells: list[Cell], *, source: str) -> None:
    """Every cell's options must be valid run options: a typo in the study file fails before anything runs."""
    from utils.config import validate
    from utils.experiment import RunOptions
    from utils.linear import LinearOptions

    seen: set[str] = set()
    for cell in cells:
        model = RunOptions if cell.mode == "full" else LinearOptions
        sig = cell.mode + json.dumps(sorted(cell.options), default=str)
        if sig not in seen:
            seen.add(sig)
            validate({**cell.options, "exp_name": cell.name}, model, source=f"{source} ({cell.mode} cell options)")


def run_study(study_path: str | Path, *, executor: str = "local", jobs: int = 1, dry_run: bool = False,
              retry_failed: bool = False, wait: bool = True, report: bool = True,
              progress: Callable[[str], None] = print) -> dict[str, int]:
    """The sweep: upstreams, grid, skip done, run the rest, then the report. Returns status counts."""
    from utils.executors import get_executor
    from utils.study import load_study

    study = load_study(study_path)
    run = get_executor(executor)
    start = time.perf_counter()
    paths = resolve_upstreams(study, make=not dry_run, progress=progress)
    cells, blocked = expand(study, paths)
    validate_cells(cells, source=str(study_path))
    status = {c.key: cell_status(c) for c in cells}
    counts = {s: sum(v == s for v in status.values()) for s in ("done", "todo", "failed")}
    planned = len(study.upstreams) * len(study.datasets) * sum(len(getattr(study, m).seeds or study.seeds)
                                                               for m in study.modes)
    progress(f"study {study.name}: grid of {planned} cells; {len(cells)} ready -- {counts['done']} done, {counts['todo']} to do, "
             f"{counts['failed']} failed" + (f"; upstreams not available yet: {', '.join(blocked)} (their cells "
                                             "are not counted)" if blocked else ""))
    for c in cells:
        if status[c.key] == "failed":
            progress(f"  failed: {c.label}: {read_error(c)}")
    todo = [c for c in cells if status[c.key] == "todo" or (retry_failed and status[c.key] == "failed")]
    if dry_run:
        for c in todo:
            progress(f"  to do: {c.label}  -> {c.run_dir}")
        return counts
    root = Path(study.experiment_root)
    log_folder = Path(study.slurm.log_folder or root / "slurm_logs")
    finished = {"done": 0, "failed": 0, "submitted": 0}
    for i, (cell, outcome) in enumerate(run(todo, jobs=jobs, slurm=study.slurm, log_folder=log_folder, wait=wait), 1):
        state = outcome["status"]
        finished[state] = finished.get(state, 0) + 1
        detail = (f"acc {outcome['val_acc']:.4f}" if state == "done" else outcome.get("error", outcome.get("job_id", "")))
        progress(f"[{i}/{len(todo)}] {state:<9} {cell.label}  {detail}  ({outcome.get('seconds', 0):.1f} s)")
    progress(f"ran {len(todo)} cells in {time.perf_counter() - start:.0f} s: {finished['done']} done, "
             f"{finished['failed']} failed" + (f", {finished['submitted']} submitted" if finished["submitted"] else ""))
    if report and (root / "results.csv").exists():
        write_study_report(study, progress=progress)
    counts = {s: sum(cell_status(c) == s for c in cells) for s in ("done", "todo", "failed")}
    return counts


def write_study_report(study: Study, *, progress: Callable[[str], None] = print) -> Path:
    """Markdown report with the paper-style tables and figures, from the study's results.csv."""
    from utils.analysis import combos, paper_table, summarize, to_markdown, write_report
    from utils.results import load_results

    root = Path(study.experiment_root)
    df = load_results([root / "results.csv"], duplicates="last")
    out = root / "report"
    write_report(df, out, notes=[f"study: {study.name}", f"results: {root / 'results.csv'}"])
    summary = summarize(df)
    for finetuning, arch in combos(summary):
        progress(f"\n{finetuning} fine-tuning, {arch}: top-1 accuracy (%), mean ± std over seeds")
        progress(to_markdown(paper_table(summary, finetuning=finetuning, arch=arch)))
    progress(f"\nreport: {out / 'report.md'}")
    return out / "report.md"

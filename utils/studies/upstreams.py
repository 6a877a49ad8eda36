"""A study's upstream checkpoints: given by path, or made by the study itself (trained, recipe-pruned, or
pruned once) -- each made once, in dependency order, keyed by what it is made from."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from pathlib import Path
from typing import Any, Callable

from utils.checkpoints import file_sha256, prune_checkpoint
from utils.errors import UserError
from utils.runs import RUNS
from utils.runs.setup import usable_cores
from utils.studies.cells import NOT_IN_KEY, dataset_file_hash, file_text_hash
from utils.studies.executors import Lane, in_worker
from utils.studies.study import Study, UpstreamSpec

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


def produce_options(study: Study, u: UpstreamSpec) -> dict[str, Any]:
    """The run options an upstream is trained with: the study's, its training options, then its own."""
    return {"workers": 0, **study.options, **study.train_options, **u.produce.options}


def produce_key(u: UpstreamSpec, source_sha: str | None, options: dict[str, Any] | None = None) -> str:
    """What an upstream is made from -- its spec, its config files' text, its source checkpoint and the options it
    is trained with (not those that only say where or how fast it runs)."""
    spec = u.produce.model_dump()
    files = {k: file_text_hash(spec[k]) for k in ("trainer_config_path", "recipe") if spec.get(k)}
    trained = u.produce.oneshot_sparsity is None                   # pruning once takes no run options
    run = {k: v for k, v in sorted((options or {}).items()) if k not in NOT_IN_KEY and trained}
    payload = json.dumps({"spec": spec, "files": files, "source": source_sha, **({"options": run} if run else {}),
                          **dataset_file_hash(spec.get("dataset_path"))}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def produced_paths(u: UpstreamSpec, root: Path, key: str) -> tuple[Path, Path]:
    """Where a one-shot pruned upstream lands, and where a trained one's model lands."""
    return root / "upstream" / f"{u.name}_{key}.pt", root / "upstream" / f"{u.name}_{key}" / "model.pt"


def produce_upstream(u: UpstreamSpec, *, root: Path, source: Path | None, options: dict[str, Any]) -> Path:
    """Make one upstream checkpoint (or find it already made) with run `options` (`produce_options`); returns
    its path."""
    p = u.produce
    key = produce_key(u, file_sha256(source) if source else None, options)
    pruned, trained = produced_paths(u, root, key)
    if p.oneshot_sparsity is not None:
        if not pruned.exists():
            prune_checkpoint(source, pruned, sparsity=p.oneshot_sparsity)
        return pruned
    if trained.exists() and (trained.parent / "result.json").exists():
        return trained
    values = {**options, "dataset": p.dataset, "dataset_path": p.dataset_path,
              "trainer_config_path": p.trainer_config_path, "arch": p.arch,
              "from_checkpoint_path": str(source) if source else None, "recipe": p.recipe,
              "recipe_args": json.dumps(p.recipe_args) if p.recipe_args else None,
              "experiment_root_path": str(root / "upstream"), "exp_name": trained.parent.name, "resume": True,
              "model_label": u.model, "sparsity_label": u.sparsity}
    kind = RUNS.get("full")
    kind.run(kind.options(**{k: v for k, v in values.items() if v is not None}))
    return trained


def resolve_upstreams(study: Study, *, make: bool, progress: Callable[[str], None] = log.info,
                      pool: Executor | Lane | None = None, jobs: int = 1) -> dict[str, Path | None]:
    """name -> checkpoint path; produced upstreams are made when `make` (else None until they exist). With a
    `pool` of `jobs` workers, every upstream whose source exists is made at once in the workers (dense first,
    then the sparse versions of it side by side), each run given the cores the others leave free (`jobs` 0: a
    pool shared with other studies; each run takes its worker's share)."""
    root = Path(study.experiment_root)
    paths: dict[str, Path | None] = {}
    waiting = upstream_order(study)
    running: dict[Future, tuple[UpstreamSpec, float]] = {}
    while waiting or running:
        ready = [u for u in waiting if not (u.produce and u.produce.from_upstream
                                            and u.produce.from_upstream not in paths)]   # else: source being made
        trainings = len(running) + sum(bool(make and u.produce and u.produce.oneshot_sparsity is None) for u in ready)
        threads = max(1, usable_cores() // max(1, min(jobs, trainings))) if jobs else None
        for u in ready:
            waiting.remove(u)
            source = _source_of(u, paths)
            if not make or u.path is not None or source is False:
                paths[u.name] = _existing(study, u, source=source, progress=progress)
            elif pool is None:
                started = time.perf_counter()
                paths[u.name] = produce_upstream(u, root=root, source=source, options=produce_options(study, u))
                progress(f"upstream {u.name}: {paths[u.name]} ({time.perf_counter() - started:.0f} s)")
            else:
                running[pool.submit(in_worker, produce_upstream, u, root=root, source=source,
                                    options=produce_options(study, u), threads=threads)] = (u, time.perf_counter())
        if running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                u, started = running.pop(future)
                paths[u.name] = future.result()       # a failed upstream stops the sweep, as it does in-process
                progress(f"upstream {u.name}: {paths[u.name]} ({time.perf_counter() - started:.0f} s)")
    return paths


def _source_of(u: UpstreamSpec, paths: dict[str, Path | None]) -> Path | None | bool:
    """The checkpoint `u` is made from: None when it is made from nothing, False when its source is missing."""
    if u.produce is None or not u.produce.from_upstream:
        return None
    return paths.get(u.produce.from_upstream) or False


def _existing(study: Study, u: UpstreamSpec, *, source: Path | None | bool,
              progress: Callable[[str], None]) -> Path | None:
    """An upstream's checkpoint when it exists without being made now (given by path, or made earlier)."""
    if u.path is not None:
        path = Path(u.path)
        if not path.exists():                  # a file, or a timm / Hugging Face model folder
            progress(f"upstream {u.name}: checkpoint {path} not found (fill in the path in the study file)")
            return None
        return path
    if source is False:
        return None
    key = produce_key(u, file_sha256(source) if source else None, produce_options(study, u))
    return next((d for d in produced_paths(u, Path(study.experiment_root), key) if d.exists()), None)

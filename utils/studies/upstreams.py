"""A study's upstream checkpoints: given by path, or made by the study itself (trained, recipe-pruned, or
pruned once) -- each made once, in dependency order, keyed by what it is made from."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from utils.checkpoints import file_sha256, prune_checkpoint
from utils.errors import UserError
from utils.runs import RUNS
from utils.studies.cells import file_text_hash
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


def produce_key(u: UpstreamSpec, source_sha: str | None) -> str:
    spec = u.produce.model_dump()
    files = {k: file_text_hash(spec[k]) for k in ("trainer_config_path", "recipe") if spec.get(k)}
    payload = json.dumps({"spec": spec, "files": files, "source": source_sha}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def produced_paths(u: UpstreamSpec, root: Path, key: str) -> tuple[Path, Path]:
    """Where a one-shot pruned upstream lands, and where a trained one's model lands."""
    return root / "upstream" / f"{u.name}_{key}.pt", root / "upstream" / f"{u.name}_{key}" / "model.pt"


def produce_upstream(u: UpstreamSpec, *, root: Path, source: Path | None, options: dict[str, Any]) -> Path:
    """Make one upstream checkpoint (or find it already made); returns its path."""
    p = u.produce
    key = produce_key(u, file_sha256(source) if source else None)
    pruned, trained = produced_paths(u, root, key)
    if p.oneshot_sparsity is not None:
        if not pruned.exists():
            prune_checkpoint(source, pruned, sparsity=p.oneshot_sparsity)
        return pruned
    if trained.exists() and (trained.parent / "result.json").exists():
        return trained
    values = {"workers": 0, **options, **p.options, "dataset": p.dataset, "dataset_path": p.dataset_path,
              "trainer_config_path": p.trainer_config_path, "arch": p.arch,
              "from_checkpoint_path": str(source) if source else None, "recipe": p.recipe,
              "recipe_args": json.dumps(p.recipe_args) if p.recipe_args else None,
              "experiment_root_path": str(root / "upstream"), "exp_name": trained.parent.name, "resume": True,
              "model_label": u.model, "sparsity_label": u.sparsity}
    kind = RUNS.get("full")
    kind.run(kind.options(**{k: v for k, v in values.items() if v is not None}))
    return trained


def resolve_upstreams(study: Study, *, make: bool,
                      progress: Callable[[str], None] = log.info) -> dict[str, Path | None]:
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
            paths[u.name] = next((d for d in produced_paths(u, root, key) if d.exists()), None)
            continue
        start = time.perf_counter()
        paths[u.name] = produce_upstream(u, root=root, source=source, options=study.options)
        progress(f"upstream {u.name}: {paths[u.name]} ({time.perf_counter() - start:.0f} s)")
    return paths

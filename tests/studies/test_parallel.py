"""Studies side by side: the fair pool, upstreams made in parallel, training options, several studies at once."""
import csv
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

from utils.studies import cell_options, expand, load_study, produce_key, resolve_upstreams, run_studies
from utils.studies.executors import FairPool

TRAINER = "epochs: 1\nbatch_size: 32\noptimizer: {name: sgd, lr: 0.05}\nschedule: {name: constant}\n"
RECIPE = """training_modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}
pruning_modifiers:
  - !GMPruningModifier {init_sparsity: 0.1, final_sparsity: 0.5, start_epoch: 0, end_epoch: 1, update_frequency: 0.5,
                        params: __ALL_PRUNABLE__}
"""


def test_a_free_worker_takes_the_lanes_tasks_in_turn():
    """One study's queue of many short tasks does not hold back another study's few."""
    order, lock = [], threading.Lock()
    gate = threading.Event()

    def task(name: str) -> str:
        gate.wait(5)
        with lock:
            order.append(name)
        return name

    with ThreadPoolExecutor(1) as pool:
        fair = FairPool(pool, jobs=1)
        many, few = fair.lane("many"), fair.lane("few")
        first = [many.submit(task, f"m{i}") for i in range(5)]
        later = [few.submit(task, f"f{i}") for i in range(2)]
        gate.set()
        assert [f.result(5) for f in first + later] == ["m0", "m1", "m2", "m3", "m4", "f0", "f1"]
    assert order == ["m0", "f0", "m1", "f1", "m2", "m3", "m4"]


def test_a_failed_task_fails_its_future_only():
    def boom() -> None:
        raise ValueError("bad cell")

    with ThreadPoolExecutor(1) as pool:
        lane = FairPool(pool, jobs=1).lane("a")
        bad, good = lane.submit(boom), lane.submit(lambda: 7)
        assert isinstance(bad.exception(5), ValueError) and good.result(5) == 7


def write_study(root: Path, name: str, *, train_options: dict | None = None) -> Path:
    (root / "trainer.yaml").write_text(TRAINER)
    (root / "gmp.yaml").write_text(RECIPE)
    produce = {"dataset": "synthetic", "trainer_config_path": str(root / "trainer.yaml"),
               "options": {"max_train_samples": 64}}
    study = {"name": name, "experiment_root": str(root / name), "seeds": [0],
             "upstreams": [
                 {"name": "dense", "model": "Dense", "sparsity": 0.0,
                  "produce": {**produce, "arch": "resnet_small"}},
                 {"name": "gmp", "model": "GMP", "sparsity": 0.5,
                  "produce": {**produce, "from_upstream": "dense", "recipe": str(root / "gmp.yaml")}},
                 {"name": "once", "model": "Magnitude", "sparsity": 0.7,
                  "produce": {"from_upstream": "dense", "oneshot_sparsity": 0.7}}],
             "datasets": [{"name": "synthetic"}], "full": {"trainer_config_path": str(root / "trainer.yaml")},
             "linear": {}, "options": {"image_size": 12, "workers": 0, "max_train_samples": 64},
             "train_options": train_options or {}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_training_options_reach_training_runs_and_upstream_keys(tmp_path):
    study = load_study(write_study(tmp_path, "s", train_options={"channels_last": True}))
    dense, gmp, once = study.upstreams
    full = cell_options(study, upstream=gmp, dataset=study.datasets[0], mode="full", seed=0, checkpoint=Path("x"))
    linear = cell_options(study, upstream=gmp, dataset=study.datasets[0], mode="linear", seed=0, checkpoint=Path("x"))
    assert full["channels_last"] is True and "channels_last" not in linear
    # what an upstream is trained with is part of its key; pruning once takes no run options
    assert produce_key(dense, None, {"image_size": 12}) != produce_key(dense, None, {"image_size": 16})
    assert produce_key(dense, None, {"image_size": 12}) == produce_key(dense, None, {"image_size": 12, "workers": 3})
    assert produce_key(once, "sha", {"image_size": 12}) == produce_key(once, "sha", {"image_size": 16})


def test_two_studies_share_one_pool_and_make_their_upstreams_in_parallel(tmp_path):
    paths = [write_study(tmp_path, "a"), write_study(tmp_path, "b", train_options={"channels_last": True})]
    lines: list[str] = []
    counts = run_studies(paths, jobs=2, progress=lines.append, report=False)
    assert all(c == {"done": 6, "queued": 0, "running": 0, "todo": 0, "failed": 0, "blocked": 0, "interrupted": 0}
               for c in counts.values()), counts
    assert any(line.startswith("[a] upstream gmp: ") for line in lines)
    assert any(line.startswith("[b] [6/6] done") for line in lines)
    for path in paths:
        study = load_study(path)
        ups = resolve_upstreams(study, make=False, progress=lambda s: None)
        assert all(ups.values())
        state = torch.load(ups["gmp"], weights_only=True)
        weights = [v for k, v in state["state_dict"].items() if k.endswith("weight") and v.dim() == 4] \
            if "state_dict" in state else [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert abs(zeros - 0.5) < 0.01
        rows = list(csv.DictReader(open(Path(study.experiment_root) / "results.csv")))
        assert sorted(r["finetuning"] for r in rows) == ["full"] * 3 + ["linear"] * 3
        cells, blocked = expand(study, ups)
        assert not blocked and len(cells) == 6


def test_the_study_runner_prints_each_studys_table(tmp_path, capsys):
    """`python -m utils.studies --study A --study B` (what `make demo` runs, with other files)."""
    from utils.studies.__main__ import main

    paths = [write_study(tmp_path, "a"), write_study(tmp_path, "b")]
    main(["--study", str(paths[0]), "--study", str(paths[1]), "--jobs", "2"])
    out = capsys.readouterr().out
    for path in paths:
        assert f"{path}: transfer from the upstream models, side by side:" in out
    assert out.count("synthetic full") == 2 and out.count("synthetic linear") == 2 and "took " in out


def test_tasks_queued_behind_a_broken_pool_fail_instead_of_waiting():
    class Broken:
        def submit(self, *args, **kwargs):
            raise RuntimeError("A process in the process pool was terminated abruptly")

    lane = FairPool(Broken(), jobs=1).lane("a")
    futures = [lane.submit(lambda: 1) for _ in range(3)]
    assert all(isinstance(f.exception(5), RuntimeError) for f in futures)


def test_workers_outlive_the_thread_that_started_them():
    """PR_SET_PDEATHSIG fires when the *thread* that started a process ends: workers the pool started lazily from a
    study's thread were sent SIGTERM when that thread ended (at the end of every `make demo`: 'leaked semaphore'
    warnings; mid-run, a broken pool)."""
    import os
    import time

    from utils.studies.executors import worker_pool

    with worker_pool(1) as pool:
        starter = threading.Thread(target=lambda: pool.submit(os.getpid).result(60))
        starter.start()
        starter.join()
        first = pool.submit(os.getpid).result(60)
        time.sleep(0.5)                     # a SIGTERM would have arrived by now
        assert pool.submit(os.getpid).result(60) == first



def test_a_run_made_again_replaces_its_earlier_row_in_the_demo_tables(tmp_path):
    from utils.studies.demo import latest_rows

    table = tmp_path / "results.csv"
    header = "dset,model,sparsity,seed,val_acc,finetuning,run_dir\n"
    table.write_text(header + "d,GMP,0.9,0,0.5,full,old\nd,GMP,0.9,1,0.6,full,other\nd,GMP,0.9,0,0.7,full,new\n")
    rows = latest_rows(table)
    assert sorted(rows["run_dir"]) == ["new", "other"]

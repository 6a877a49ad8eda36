"""The battery's cases before issue 25 (90), and the files and commands they are built from (bench/bad_inputs.py)."""
from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from models import build_model  # noqa: E402
from utils.checkpoints import save_native_checkpoint  # noqa: E402
from utils.sparsity import magnitude_prune_  # noqa: E402

PY = sys.executable
TRAINER = "epochs: 1\nbatch_size: 16\noptimizer: {name: sgd, lr: 0.05}\nschedule: {name: constant}\n"
LATIN1 = "# réglage\n".encode("latin-1")


# -------------------------------------------------------------------------------- files the cases use

def checkpoint(path: Path, *, sparsity: float = 0.5, num_classes: int = 4) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=num_classes)
    masks = magnitude_prune_(model, sparsity) if sparsity else None
    path.parent.mkdir(parents=True, exist_ok=True)
    save_native_checkpoint(path, model, arch="resnet_small", arch_kwargs={}, masks=masks)
    return path


def image(path: Path, size: int = 12, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def folders(root: Path, classes=("cat", "dog", "emu"), train: int = 3, test: int = 1) -> Path:
    for c, name in enumerate(classes):
        for i in range(train):
            image(root / "train" / name / f"{i}.png", seed=10 * c + i)
        for i in range(test):
            image(root / "test" / name / f"{i}.png", seed=100 + 10 * c + i)
    return root


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


# -------------------------------------------------------------------------------- cases

@dataclass
class Case:
    name: str
    argv: Callable[[Path], list[str]]                 # the command, given the case folder (files made here)
    must: str | None = None                           # a fragment the error line must hold (refusals)
    recover: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None  # -> problem or None
    before: list[Callable[[Path], object]] = field(default_factory=list)  # runs that prepare the case


def main_py(d: Path, *flags: str, trainer: str | None = None, dset: tuple[str, ...] = ("--dset", "synthetic"),
            src: tuple[str, ...] | None = None) -> list[str]:
    cfg = trainer or str(write(d / "trainer.yaml", TRAINER))
    src = src if src is not None else ("--from_checkpoint_path", str(checkpoint(d / "up.pt")))
    return [PY, str(ROOT / "main.py"), *dset, "--config_path", cfg, *src, "--experiment_root_path", str(d / "exp"),
            "--workers", "0", "--no_progress", "--image_size", "16", *flags]


def linear_py(d: Path, *flags: str, dset: tuple[str, ...] = ("--dataset", "synthetic")) -> list[str]:
    return [PY, str(ROOT / "finetune_pre_extracted_features.py"), *dset, "--from_checkpoint_path",
            str(checkpoint(d / "up.pt")), "--features_cache", str(d / "cache"), "--experiment_root_path",
            str(d / "exp"), "--workers", "0", "--no_progress", "--image_size", "16", *flags]


def trainer_file(d: Path, text: str | bytes) -> str:
    return str(write(d / "t.yaml", text))


def recipe_file(d: Path, text: str | bytes) -> str:
    return str(write(d / "recipe.yaml", text))


def bad_images(d: Path, what: str) -> str:
    root = folders(d / "data")
    bad = root / "train" / "cat" / "bad.jpg"
    if what == "empty":
        write(bad, b"")
    elif what == "text":
        write(bad, "this is not an image")
    elif what == "truncated":
        image(root / "train" / "cat" / "full.jpg", size=64)
        data = (root / "train" / "cat" / "full.jpg").read_bytes()
        write(bad, data[: len(data) // 2])
        (root / "train" / "cat" / "full.jpg").unlink()
    elif what == "tiny":
        Image.new("RGB", (1, 1)).save(root / "train" / "cat" / "tiny.png")
    return str(root)


def nan_checkpoint(d: Path) -> str:
    path = checkpoint(d / "nan.pt", sparsity=0.0)
    data = torch.load(path, weights_only=True)
    next(v for v in data["state_dict"].values() if v.dim() == 4).view(-1)[3] = float("nan")
    torch.save(data, path)
    return str(path)


def study(d: Path, text: str | bytes | None = None, **changes) -> str:
    ckpt = checkpoint(d / "up.pt")
    write(d / "trainer.yaml", TRAINER)
    body = {"name": "s", "experiment_root": str(d / "exp"), "seeds": [1],
            "upstreams": [{"name": "up", "model": "GMP", "sparsity": 0.5, "path": str(ckpt)}],
            "datasets": [{"name": "synthetic"}], "full": {"trainer_config_path": str(d / "trainer.yaml")},
            "options": {"image_size": 16, "workers": 0}}
    body.update(changes)
    return str(write(d / "study.yaml", text if text is not None else json.dumps(body)))


def results_rows(d: Path) -> list[dict]:
    with open(d / "exp" / "results.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ran_once(d: Path, out: subprocess.CompletedProcess, rows: int = 1) -> str | None:
    if out.returncode != 0:
        return f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"
    try:
        found = results_rows(d)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return f"results.csv unreadable: {err}"
    if len(found) != rows or any(None in r or not r.get("val_acc") for r in found):
        return f"results.csv has {len(found)} rows (want {rows}) or a fused row"
    return None


def cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    # --- main.py flags
    add(Case("main: config file missing", lambda d: main_py(d, trainer=str(d / "nope.yaml")), "nope.yaml"))
    add(Case("main: unknown dataset", lambda d: main_py(d, dset=("--dset", "cifar11")), "cifar11"))
    add(Case("main: checkpoint missing", lambda d: main_py(d, src=("--from_checkpoint_path", str(d / "x.pth"))),
             "x.pth"))
    add(Case("main: misspelt arch", lambda d: main_py(d, src=("--arch", "resnet_smal")), "resnet_small"))
    add(Case("main: --epochs 0", lambda d: main_py(d, "--epochs", "0"), "epochs"))
    add(Case("main: --epochs -3", lambda d: main_py(d, "--epochs", "-3"), "epochs"))
    add(Case("main: --batch_size 0", lambda d: main_py(d, "--batch_size", "0"), "batch_size"))
    add(Case("main: --lr -1", lambda d: main_py(d, "--lr", "-1"), "lr"))
    add(Case("main: --accumulate_steps 0", lambda d: main_py(d, "--accumulate_steps", "0"), "accumulate_steps"))
    add(Case("main: --gpus zero", lambda d: main_py(d, "--gpus", "zero"), "--gpus"))
    add(Case("main: --manual_seed abc", lambda d: main_py(d, "--manual_seed", "abc"), "manual_seed"))
    add(Case("main: --exp_name ../x", lambda d: main_py(d, "--exp_name", "../x"), "exp_name"))
    add(Case("main: --exp_name /abs", lambda d: main_py(d, "--exp_name", "/tmp/abs"), "exp_name"))
    add(Case("main: --image_size 0", lambda d: main_py(d, "--image_size", "0"), "image_size"))
    add(Case("main: --max_train_samples 0", lambda d: main_py(d, "--max_train_samples", "0"), "max_train_samples"))
    add(Case("main: --interpolation sideways", lambda d: main_py(d, "--interpolation", "sideways"), "interpolation"))
    add(Case("main: unknown flavour", lambda d: main_py(d, "--checkpoint_flavour", "acdcc"), "acdcc"))
    add(Case("main: --dset_path for digits", lambda d: main_py(d, "--dset_path", str(d), dset=("--dset", "digits")),
             "takes no data path"))
    add(Case("main: imagefolder path missing",
             lambda d: main_py(d, dset=("--dset", "imagefolder", "--dset_path", str(d / "nodata"))), "nodata"))
    add(Case("main: imagefolder path is a file",
             lambda d: main_py(d, dset=("--dset", "imagefolder", "--dset_path", str(write(d / "f.txt", "x")))),
             "f.txt"))
    add(Case("main: imagefolder without its folders", lambda d: main_py(
        d, dset=("--dset", "imagefolder", "--dset_path", str((d / "empty").mkdir() or d / "empty"))), "empty"))
    add(Case("main: --resume of a finished run with another lr",
             lambda d: main_py(d, "--exp_name", "r", "--resume", "--lr", "0.5"), "other settings",
             before=[lambda d: subprocess.run(main_py(d, "--exp_name", "r"), capture_output=True)]))
    add(Case("main: finished run without --resume", lambda d: main_py(d, "--exp_name", "r"), "--resume",
             before=[lambda d: subprocess.run(main_py(d, "--exp_name", "r"), capture_output=True)]))
    add(Case("main: --eval_only on an upstream", lambda d: main_py(d, "--eval_only", src=(
        "--from_checkpoint_path", str(checkpoint(d / "imagenet.pt", num_classes=10)))), "--eval_only"))
    add(Case("main: --eval_only with other classes", lambda d: main_py(
        d, "--eval_only", "--exp_name", "ev", dset=("--dset", "imagefolder", "--dset_path",
                                                   str(folders(d / "other", ("ant", "cat", "dog")))),
        src=("--from_checkpoint_path", str(d / "exp" / "ft" / "model.pt"))),
        "class order", before=[lambda d: subprocess.run(main_py(
            d, "--exp_name", "ft", dset=("--dset", "imagefolder", "--dset_path", str(folders(d / "data"))),
            src=("--arch", "resnet_small")), capture_output=True)]))
    add(Case("main: --distill_teacher without a distillation recipe",
             lambda d: main_py(d, "--distill_teacher", str(d / "t.pt")), "--distill_teacher"))
    # --- trainer configs
    add(Case("trainer: not UTF-8", lambda d: main_py(d, trainer=trainer_file(d, LATIN1 + TRAINER.encode())),
             "not UTF-8"))
    add(Case("trainer: invalid YAML", lambda d: main_py(d, trainer=trainer_file(d, "epochs: [1\n")), "invalid YAML"))
    add(Case("trainer: misspelt key", lambda d: main_py(d, trainer=trainer_file(d, TRAINER.replace("lr:", "lrr:"))),
             "did you mean 'lr'"))
    add(Case("trainer: lr not a number",
             lambda d: main_py(d, trainer=trainer_file(d, TRAINER.replace("0.05", "fast"))), "optimizer.lr"))
    add(Case("trainer: negative lr", lambda d: main_py(d, trainer=trainer_file(d, TRAINER.replace("0.05", "-0.1"))),
             "optimizer.lr"))
    add(Case("trainer: unknown optimizer",
             lambda d: main_py(d, trainer=trainer_file(d, TRAINER.replace("sgd", "sgdd"))), "sgdd"))
    add(Case("trainer: unknown schedule",
             lambda d: main_py(d, trainer=trainer_file(d, TRAINER.replace("constant", "wobbly"))), "wobbly"))
    add(Case("trainer: empty file", lambda d: main_py(d, trainer=trainer_file(d, "")), "t.yaml"))
    add(Case("trainer: a list", lambda d: main_py(d, trainer=trainer_file(d, "- 1\n- 2\n")), "t.yaml"))
    add(Case("trainer: epochs 0", lambda d: main_py(d, trainer=trainer_file(d, TRAINER.replace("epochs: 1",
                                                                                               "epochs: 0"))),
             "epochs"))
    add(Case("trainer: ema decay 1 or more",
             lambda d: main_py(d, trainer=trainer_file(d, TRAINER + "ema: {decay: 1.5}\n")), "ema.decay"))
    add(Case("trainer: ema key misspelt",
             lambda d: main_py(d, trainer=trainer_file(d, TRAINER + "ema: {tau: 10}\n")), "ema.tau"))
    add(Case("trainer: two accumulation rules",
             lambda d: main_py(d, trainer=trainer_file(d, TRAINER + "accumulate_steps: 2\nnominal_batch_size: 64\n")),
             "not both"))
    add(Case("trainer: mosaic for a classifier",
             lambda d: main_py(d, trainer=trainer_file(d, TRAINER + "mosaic: 1.0\n")), "mosaic"))
    # --- recipes
    add(Case("recipe: missing", lambda d: main_py(d, "--recipe", str(d / "r.yaml")), "r.yaml"))
    add(Case("recipe: not UTF-8", lambda d: main_py(d, "--recipe", recipe_file(
        d, LATIN1 + b"modifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n")), "not UTF-8"))
    add(Case("recipe: unknown modifier", lambda d: main_py(d, "--recipe", recipe_file(
        d, "modifiers:\n  - !MagicModifier\n    end_epoch: 1\n")), "MagicModifier"))
    add(Case("recipe: misspelt modifier key", lambda d: main_py(d, "--recipe", recipe_file(
        d, "modifiers:\n  - !EpochRangeModifier\n    end_epoc: 1\n")), "end_epoc"))
    add(Case("recipe: eval calling a function", lambda d: main_py(d, "--recipe", recipe_file(
        d, "num_epochs: 1\nmodifiers:\n  - !EpochRangeModifier\n    end_epoch: eval(__import__('os').getpid())\n")),
        "eval"))
    add(Case("recipe: bad --recipe_args", lambda d: main_py(d, "--recipe", recipe_file(
        d, "num_epochs: 1\nmodifiers:\n  - !EpochRangeModifier\n    end_epoch: eval(num_epochs)\n"),
        "--recipe_args", "{not json"), "recipe_args"))
    add(Case("recipe: sparsity above 1", lambda d: main_py(d, "--recipe", recipe_file(
        d, "modifiers:\n  - !EpochRangeModifier\n    end_epoch: 1\n  - !GMPruningModifier\n    init_sparsity: 0.1\n"
           "    final_sparsity: 1.5\n    start_epoch: 0\n    end_epoch: 1\n    update_frequency: 0.5\n"
           "    params: __ALL_PRUNABLE__\n")), "final_sparsity"))
    # --- checkpoints
    add(Case("checkpoint: random bytes", lambda d: main_py(d, src=(
        "--from_checkpoint_path", str(write(d / "r.pt", np.random.default_rng(0).bytes(4096))))), "r.pt"))
    add(Case("checkpoint: zero bytes",
             lambda d: main_py(d, src=("--from_checkpoint_path", str(write(d / "z.pt", b"")))),
             "z.pt"))
    add(Case("checkpoint: a text file", lambda d: main_py(d, src=(
        "--from_checkpoint_path", str(write(d / "t.pth", "hello")))), "t.pth"))
    add(Case("checkpoint: a folder", lambda d: main_py(d, src=(
        "--from_checkpoint_path", str((d / "dir.pth").mkdir() or d / "dir.pth"))), "dir.pth"))
    add(Case("checkpoint: malicious pickle", lambda d: main_py(d, src=(
        "--from_checkpoint_path", str(_save(d / "evil.pt", {"state_dict": {}, "x": _RunsCode()})))), "runs code"))
    add(Case("checkpoint: plain pickle of a dict", lambda d: main_py(d, src=(
        "--from_checkpoint_path", str(write(d / "p.pkl.pt", pickle.dumps({"a": 1}))))), "p.pkl.pt"))
    add(Case("checkpoint: an unknown class inside", lambda d: main_py(d, src=(
        "--from_checkpoint_path", str(_save(d / "cls.pt", {"state_dict": {}, "args": Path("/x")})))),
        "trusted_globals"))
    add(Case("checkpoint: NaN weights", lambda d: main_py(d, src=("--from_checkpoint_path", nan_checkpoint(d))),
             "NaN"))
    add(Case("checkpoint: truncated", lambda d: main_py(d, src=("--from_checkpoint_path", _truncated(d))), "cut.pt"))
    add(Case("checkpoint: a state_dict of another model", lambda d: main_py(d, src=(
        "--from_checkpoint_path", str(_save(d / "other.pt", {"state_dict": {"fc.weight": torch.zeros(3, 3)}})))),
        "other.pt"))
    # --- images
    for what in ("empty", "text", "truncated", "tiny"):
        add(Case(f"images: {what} file in train", lambda d, w=what: main_py(
            d, dset=("--dset", "imagefolder", "--dset_path", bad_images(d, w))), "data/train/cat"))
    add(Case("images: class without training images", lambda d: main_py(d, dset=(
        "--dset", "imagefolder", "--dset_path", str(_no_train_class(d)))), "emu"))
    add(Case("images: test split missing", lambda d: main_py(d, dset=(
        "--dset", "imagefolder", "--dset_path", str(_no_test(d)))), "test"))
    add(Case("images: dtd split file lists a missing image", lambda d: main_py(d, dset=(
        "--dset", "dtd", "--dset_path", _dtd(d, missing=True))), "banded_missing.jpg"))
    add(Case("images: dtd split file not UTF-8", lambda d: main_py(d, dset=(
        "--dset", "dtd", "--dset_path", _dtd(d, latin1=True))), "UTF-8"))
    # --- results.csv
    add(Case("results.csv: not UTF-8", lambda d: main_py(d), "results.csv",
             before=[lambda d: write(d / "exp" / "results.csv", LATIN1)]))
    add(Case("results.csv: other columns", lambda d: main_py(d), "results.csv",
             before=[lambda d: write(d / "exp" / "results.csv", "a,b\n1,2\n")]))
    add(Case("results.csv: no final newline", lambda d: main_py(d, "--exp_name", "second"),
             recover=lambda d, out: ran_once(d, out, rows=2),
             before=[lambda d: subprocess.run(main_py(d, "--exp_name", "first"), capture_output=True),
                     lambda d: write(d / "exp" / "results.csv",
                                     (d / "exp" / "results.csv").read_text().rstrip("\n"))]))
    add(Case("run: --resume of a finished run through a relative root", lambda d: [
        "exp" if a == str(d / "exp") else a for a in main_py(d, "--exp_name", "r", "--resume")],
        recover=lambda d, out: ran_once(d, out, rows=1),
        before=[lambda d: subprocess.run(main_py(d, "--exp_name", "r"), capture_output=True)]))
    # --- linear
    add(Case("linear: unknown solver", lambda d: linear_py(d, "--solver", "newton"), "newton"))
    add(Case("linear: misspelt probe key", lambda d: linear_py(d, "--probe_config_path", trainer_file(
        d, "l2_grid: [0.1]\nmax_iterr: 10\n")), "max_iterr"))
    add(Case("linear: --dataset_path for digits", lambda d: linear_py(d, "--dataset_path", str(d),
                                                                      dset=("--dataset", "digits")),
             "takes no data path"))
    add(Case("linear: zero-byte features.npy in the cache", lambda d: linear_py(d, "--seed", "2"),
             recover=lambda d, out: ran_once(d, out, rows=2),
             before=[lambda d: subprocess.run(linear_py(d, "--seed", "1"), capture_output=True),
                     lambda d: [write(p, b"") for p in (d / "cache").rglob("features.npy")]]))
    add(Case("linear: meta.json without count", lambda d: linear_py(d, "--seed", "2"),
             recover=lambda d, out: ran_once(d, out, rows=2),
             before=[lambda d: subprocess.run(linear_py(d, "--seed", "1"), capture_output=True),
                     lambda d: [write(p, json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                                     if k != "count"})) for p in (d / "cache").rglob("meta.json")]]))
    # --- sweep
    add(Case("sweep: study missing", lambda d: [PY, str(ROOT / "sweep.py"), str(d / "s.yaml")], "s.yaml"))
    add(Case("sweep: study not UTF-8", lambda d: [PY, str(ROOT / "sweep.py"), study(d, LATIN1 + b"name: s\n")],
             "not UTF-8"))
    add(Case("sweep: unknown key", lambda d: [PY, str(ROOT / "sweep.py"), study(d, sedes=[1])], "sedes"))
    add(Case("sweep: upstream path missing", lambda d: [PY, str(ROOT / "sweep.py"), study(
        d, upstreams=[{"name": "up", "model": "GMP", "sparsity": 0.5, "path": str(d / "gone.pt")}]), "--no-report"],
        "upstream(s) missing"))
    add(Case("sweep: unknown executor", lambda d: [PY, str(ROOT / "sweep.py"), study(d), "--executor", "k8s"],
             "k8s"))
    add(Case("sweep: a failing cell", lambda d: [PY, str(ROOT / "sweep.py"), study(
        d, datasets=[{"name": "imagefolder", "path": str(d / "nodata")}]), "--no-report"], "failed"))
    # --- analysis
    add(Case("analyze: --out is a file", lambda d: [PY, str(ROOT / "analyze.py"), "--out", str(write(d / "o.md", "x")),
                                                    "--no-figures"], "o.md"))
    add(Case("analyze: input missing", lambda d: [PY, str(ROOT / "analyze.py"), str(d / "none.csv"), "--out",
                                                  str(d / "rep")], "none.csv"))
    add(Case("analyze: CSV without the columns", lambda d: [PY, str(ROOT / "analyze.py"), str(write(
        d / "r.csv", "x,y\n1,2\n")), "--out", str(d / "rep")], "r.csv"))
    add(Case("analyze: CSV not UTF-8", lambda d: [PY, str(ROOT / "analyze.py"), str(write(
        d / "r.csv", LATIN1 + b"dset,model\n")), "--out", str(d / "rep")], "r.csv"))
    # --- checkpoint and deploy tools, sparse_transfer.py
    add(Case("checkpoints: --sparsity 1.5", lambda d: [PY, "-m", "utils.checkpoints", str(checkpoint(d / "up.pt")),
                                                       "--prune", str(d / "o.pt"), "--sparsity", "1.5"], "sparsity"))
    add(Case("checkpoints: file missing", lambda d: [PY, "-m", "utils.checkpoints", str(d / "no.pt")], "no.pt"))
    add(Case("deploy: file missing", lambda d: [PY, "-m", "utils.deploy", str(d / "no.pt")], "no.pt"))
    add(Case("sparse_transfer: data missing", lambda d: [PY, str(ROOT / "sparse_transfer.py"), "--use-case",
                                                         "image_classification", "--data", str(d / "none")], "none"))
    add(Case("sparse_transfer: unknown use case", lambda d: [PY, str(ROOT / "sparse_transfer.py"), "--use-case",
                                                             "nlp", "--data", str(folders(d / "data"))], "nlp"))
    add(Case("sparse_transfer: optim level 2", lambda d: [PY, str(ROOT / "sparse_transfer.py"), "--use-case",
                                                          "image_classification", "--data", str(folders(d / "data")),
                                                          "--optim-level", "2"], "optim"))
    return c


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _truncated(d: Path) -> str:
    data = checkpoint(d / "whole.pt").read_bytes()
    return str(write(d / "cut.pt", data[: len(data) // 2]))


def _no_train_class(d: Path) -> Path:
    root = folders(d / "data")
    for p in (root / "train" / "emu").iterdir():
        p.unlink()
    return root


def _no_test(d: Path) -> Path:
    root = folders(d / "data")
    for p in sorted((root / "test").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "test").rmdir()
    return root


def _dtd(d: Path, *, missing: bool = False, latin1: bool = False) -> str:
    base = d / "dtd" / "dtd"
    splits: dict[str, list[str]] = {"train1": [], "val1": [], "test1": []}
    for cls in ["banded"] + [f"texture{k:02d}" for k in range(46)]:      # DTD's 47 classes
        for i, split in enumerate(splits):
            image(base / "images" / cls / f"{cls}_{i}.jpg", seed=i)
            splits[split].append(f"{cls}/{cls}_{i}.jpg")
    if missing:
        splits["train1"].append("banded/banded_missing.jpg")
    for split, lines in splits.items():
        write(base / "labels" / f"{split}.txt", "".join(line + "\n" for line in lines))
    if latin1:
        with open(base / "labels" / "train1.txt", "ab") as f:
            f.write("banded/ré.jpg\n".encode("latin-1"))
    return str(d / "dtd")

"""Feature extraction and its cache: reuse, invalidation, atomicity, torch vs ONNX Runtime agreement."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from models import build_model
from utils.linear import (
    BACKENDS,
    build_backend,
    cache_key,
    cached_features,
    describe_split,
    entry_dir,
    extract_features,
    read_entry,
)
from utils.paths import REPO_ROOT as REPO  # noqa: E402


class Images(Dataset):
    """Deterministic random images; optionally fails (or stalls) when item `stop_at` is read."""

    def __init__(self, n: int = 10, size: int = 16, *, stop_at: int | None = None, stall_marker: str | None = None):
        self.images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
        self.stop_at, self.stall_marker = stop_at, stall_marker
        self.transform = f"Resize({size})"

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i == self.stop_at:
            if self.stall_marker:
                Path(self.stall_marker).write_text("stalled")
                time.sleep(60)
            raise RuntimeError("interrupted")
        return self.images[i], i % 3


def model(seed: int = 0):
    torch.manual_seed(seed)
    m = build_model("resnet_small", num_classes=3)
    for module in m.modules():  # non-trivial BatchNorm statistics, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return m.eval()


def description(dataset, *, sha="a" * 64, size=16, split="train", backend="torch"):
    meta = {"dataset": "toy", "layout": "memory", "root": None, "num_classes": 3, "image_size": size,
            "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3, "max_train_samples": None, "seed": 0}
    return describe_split(checkpoint={"path": "/ckpts/up.pt", "sha256": sha, "flavour": "native"},
                          dataset_meta=meta, split=split, dataset=dataset, backend=backend)


def counting_backend(m, calls):
    def make():
        calls.append(1)
        return build_backend("torch", m, device=torch.device("cpu"), workdir=Path("."), input_size=16)
    return make


def test_cache_is_reused_and_matches_a_fresh_extraction(tmp_path, caplog):
    m, data, calls = model(), Images(), []
    first = cached_features(counting_backend(m, calls), data, cache_root=tmp_path, description=description(data),
                            dim=m.num_features, batch_size=4, progress=False)
    assert not first.reused and len(calls) == 1
    assert sorted(p.name for p in first.path.iterdir()) == ["features.npy", "labels.npy", "meta.json"]
    assert first.meta["count"] == 10 and first.meta["dim"] == m.num_features
    assert first.meta["checkpoint"]["sha256"] == "a" * 64 and first.meta["split"] == "train"
    with torch.no_grad():
        expected = m.forward_features(data.images).numpy()
    np.testing.assert_allclose(first.features, expected, rtol=1e-5, atol=1e-6)
    assert first.labels.tolist() == [i % 3 for i in range(10)]
    with caplog.at_level("INFO", logger="utils.linear.features"):
        second = cached_features(counting_backend(m, calls), data, cache_root=tmp_path,
                                 description=description(data), dim=m.num_features, progress=False)
    assert second.reused and len(calls) == 1 and second.path == first.path
    assert "reusing cached features" in caplog.text
    np.testing.assert_array_equal(second.features, first.features)


@pytest.mark.parametrize("change", [dict(sha="b" * 64), dict(size=24), dict(split="test"), dict(backend="onnxruntime")])
def test_a_changed_checkpoint_transform_split_or_backend_is_a_different_entry(tmp_path, change):
    m, data, calls = model(), Images(), []
    base = description(data)
    cached_features(counting_backend(m, calls), data, cache_root=tmp_path, description=base, dim=m.num_features,
                    progress=False)
    changed = description(data, **change)
    assert cache_key(changed) != cache_key(base) and entry_dir(tmp_path, changed) != entry_dir(tmp_path, base)
    again = cached_features(counting_backend(m, calls), data, cache_root=tmp_path, description=changed,
                            dim=m.num_features, progress=False)
    assert not again.reused and len(calls) == 2


def test_description_ignores_the_seed_unless_it_picks_a_subset():
    data = Images()
    meta = {"dataset": "toy", "max_train_samples": None}
    a = describe_split(checkpoint={}, dataset_meta={**meta, "seed": 1}, split="train", dataset=data, backend="torch")
    b = describe_split(checkpoint={}, dataset_meta={**meta, "seed": 2}, split="train", dataset=data, backend="torch")
    assert cache_key(a) == cache_key(b)
    sub = {"dataset": "toy", "max_train_samples": 5}
    c = describe_split(checkpoint={}, dataset_meta={**sub, "seed": 1}, split="train", dataset=data, backend="torch")
    d = describe_split(checkpoint={}, dataset_meta={**sub, "seed": 2}, split="train", dataset=data, backend="torch")
    assert cache_key(c) != cache_key(d)


def test_a_stale_entry_with_another_key_is_replaced(tmp_path):
    m, data, calls = model(), Images(), []
    desc = description(data)
    entry = cached_features(counting_backend(m, calls), data, cache_root=tmp_path, description=desc,
                            dim=m.num_features, progress=False)
    meta = entry.path / "meta.json"
    meta.write_text(meta.read_text().replace(cache_key(desc), "0" * 64))
    assert read_entry(entry.path, cache_key(desc)) is None
    again = cached_features(counting_backend(m, calls), data, cache_root=tmp_path, description=desc,
                            dim=m.num_features, progress=False)
    assert not again.reused and read_entry(entry.path, cache_key(desc)) is not None


def _empty_features(entry):
    (entry / "features.npy").write_bytes(b"")


def _meta_without(key):
    def damage(entry):
        meta = json.loads((entry / "meta.json").read_text())
        del meta[key]
        (entry / "meta.json").write_text(json.dumps(meta))
    return damage


@pytest.mark.parametrize("damage", [
    _empty_features, _meta_without("count"), _meta_without("dim"),
    lambda entry: (entry / "meta.json").write_bytes(b"\xff\xfe not json"),
    lambda entry: (entry / "meta.json").write_text("[1, 2]"),
    lambda entry: (entry / "labels.npy").write_bytes(b"\x93NUMPY garbage"),
    lambda entry: np.save(entry / "labels.npy", np.load(entry / "labels.npy") + 7),
    lambda entry: np.save(entry / "labels.npy", np.load(entry / "labels.npy").astype(np.float32)),
    lambda entry: np.save(entry / "features.npy", np.full_like(np.load(entry / "features.npy"), np.nan)),
], ids=["zero-byte features.npy", "meta without count", "meta without dim", "meta not UTF-8", "meta a list",
        "labels.npy garbage", "labels out of range", "labels not integers", "NaN features"])
def test_a_damaged_entry_is_extracted_again_not_a_traceback(tmp_path, damage, caplog):
    """Issue 12 item 9: a zero-byte features.npy or a meta.json without count crashed the linear run."""
    m, data, calls = model(), Images(), []
    desc = description(data)
    entry = cached_features(counting_backend(m, calls), data, cache_root=tmp_path, description=desc,
                            dim=m.num_features, progress=False)
    damage(entry.path)
    with caplog.at_level("WARNING", logger="utils.linear.features"):
        assert read_entry(entry.path, cache_key(desc)) is None
        again = cached_features(counting_backend(m, calls), data, cache_root=tmp_path, description=desc,
                                dim=m.num_features, progress=False)
    assert "re-extracting" in caplog.text and str(entry.path) in caplog.text
    assert not again.reused and len(calls) == 2
    np.testing.assert_array_equal(again.features, entry.features)


def test_a_failed_extraction_leaves_no_entry(tmp_path):
    m, calls = model(), []
    data = Images(stop_at=7)
    with pytest.raises(RuntimeError, match="interrupted"):
        cached_features(counting_backend(m, calls), data, cache_root=tmp_path, description=description(data),
                        dim=m.num_features, batch_size=2, progress=False)
    path = entry_dir(tmp_path, description(data))
    assert not path.exists() and list(path.parent.iterdir()) == []


KILLED_EXTRACTION = """
import sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from pathlib import Path
from test_features import Images, counting_backend, description, model
from utils.linear import cached_features
m, data = model(), Images(stop_at=7, stall_marker={marker!r})
cached_features(counting_backend(m, []), data, cache_root=Path({root!r}), description=description(data),
                dim=m.num_features, batch_size=2, progress=False)
"""


def test_a_killed_extraction_leaves_no_valid_looking_cache(tmp_path):
    marker = tmp_path / "stalled"
    script = KILLED_EXTRACTION.format(repo=str(REPO), tests=str(REPO / "tests" / "linear"), marker=str(marker),
                                      root=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while not marker.exists():  # killed mid-extraction, with features already written to disk
            assert proc.poll() is None and time.time() < deadline, "the extraction did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    data = Images()
    desc = description(data)
    path = entry_dir(tmp_path / "cache", desc)
    leftovers = list(path.parent.iterdir())
    assert not path.exists() and len(leftovers) == 1 and leftovers[0].name.startswith(".")  # only its temporary
    assert read_entry(path, cache_key(desc)) is None
    m, calls = model(), []
    fresh = cached_features(counting_backend(m, calls), data, cache_root=tmp_path / "cache", description=desc,
                            dim=m.num_features, progress=False)
    assert not fresh.reused and len(calls) == 1 and fresh.meta["count"] == 10
    assert list(path.parent.iterdir()) == [path]  # the dead process's temporary was cleaned up


def test_torch_and_onnxruntime_features_agree(tmp_path, caplog):
    m, data = model(1), Images(n=7, size=32)
    kw = dict(device=torch.device("cpu"), workdir=tmp_path / "onnx", input_size=32)
    torch_run = build_backend("torch", m, **kw)
    ort_run = build_backend("onnxruntime", m, **kw)  # exporting leaves the model in eval mode
    assert not m.training
    ref = extract_features(torch_run, data, dim=m.num_features, batch_size=3, progress=False)
    ort = extract_features(ort_run, data, dim=m.num_features, batch_size=4, progress=False)
    rel = np.linalg.norm(ort.features - ref.features, axis=1) / np.linalg.norm(ref.features, axis=1)
    assert rel.max() < 1e-4
    assert np.array_equal(ort.labels, ref.labels)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    with caplog.at_level("INFO", logger="utils.linear.backends"):
        build_backend("onnxruntime", m, **kw)  # same backbone: the export is reused
    assert "reusing ONNX backbone" in caplog.text and len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    m.reset_classifier(5)  # a new head does not change the backbone's export
    build_backend("onnxruntime", m, **kw)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1


def test_backends_are_a_registry():
    assert set(BACKENDS.names()) == {"torch", "onnxruntime", "openvino", "deepsparse", "sparse"}


def test_the_sparse_engine_extracts_the_features_torch_does(tmp_path):
    """The study's linear protocol on a sparse backbone through the engine that skips its zeros."""
    from utils.sparsity import magnitude_prune_
    m, data = model(1), Images(n=5, size=32)
    magnitude_prune_(m, 0.9)
    kw = dict(device=torch.device("cpu"), workdir=tmp_path / "onnx", input_size=32)
    ref = extract_features(build_backend("torch", m, **kw), data, dim=m.num_features, batch_size=2, progress=False)
    got = extract_features(build_backend("sparse", m, **kw), data, dim=m.num_features, batch_size=2, progress=False)
    rel = np.linalg.norm(got.features - ref.features, axis=1) / np.linalg.norm(ref.features, axis=1)
    assert rel.max() < 1e-4 and np.array_equal(got.labels, ref.labels)

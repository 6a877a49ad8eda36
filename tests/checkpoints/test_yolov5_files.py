"""YOLOv5 checkpoint files: plain state dicts and the reference's pickled-module .pt files (read as data only)."""
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml

from models import build_model
from utils.checkpoints import FLAVOURS, detect_flavour, load_checkpoint
from utils.errors import UserError
from utils.paths import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "models" / "fixtures"
TINY = {"depth_multiple": 0.33, "width_multiple": 0.0625}     # the fixture's size (yolov5n layout)


def tiny_flavour(tmp_path):
    path = tmp_path / "yolov5_tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "yolov5_tiny", "extends": "yolov5n", "description": "the fixture's size",
                                    "arch_kwargs": TINY}))
    return str(path)


def test_the_references_pickled_module_file_loads_its_tensors(tmp_path):
    reference = torch.load(FIXTURES / "yolov5_reference.pt", weights_only=True)
    loaded = load_checkpoint(FIXTURES / "yolov5_reference_module.pt", flavour=tiny_flavour(tmp_path),
                             keep_classifier=True)
    state = loaded.model.state_dict()
    for key, value in reference["state_dict"].items():      # the file holds them in half precision
        assert torch.equal(state[key], value.half().to(value.dtype)), key
    loaded.model.eval()
    with torch.no_grad():
        decoded, _ = loaded.model(reference["input"])
    torch.testing.assert_close(decoded, reference["decoded"], rtol=0.02, atol=0.02)   # half-precision weights
    assert loaded.num_classes == 3 and loaded.report.zeros_outside_mask == 0


def write_payload_file(path, marker) -> None:
    """The reference's module file with an os.system payload in front of its checkpoint dict, by pickle opcodes:
    the data.pkl becomes the tuple (payload, checkpoint)."""
    with zipfile.ZipFile(FIXTURES / "yolov5_reference_module.pt") as z:
        names = z.namelist()
        data_pkl = next(n for n in names if n.endswith("data.pkl"))
        files = {n: z.read(n) for n in names}

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(Payload(), protocol=2)[2:-1]          # without the PROTO header and STOP
    body = files[data_pkl][2:-1]
    files[data_pkl] = b"\x80\x02" + payload + body + b"\x86."     # TUPLE2, STOP
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(name, files[name])


def test_a_payload_in_a_pickled_module_file_does_nothing(tmp_path):
    """The file's module classes become inert stand-ins; a payload (os.system via __reduce__) is refused, not run."""
    evil, marker = tmp_path / "evil.pt", tmp_path / "owned"
    write_payload_file(evil, marker)
    with pytest.raises(UserError, match="runs code"):
        load_checkpoint(evil, flavour=tiny_flavour(tmp_path))
    with pytest.raises(UserError, match="runs code"):
        load_checkpoint(evil)                                     # auto-detection reads it the same way
    assert not marker.exists()
    # the payload is live: a plain torch.load would have run it
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, weights_only=False)"],
                   capture_output=True, cwd=tmp_path)
    assert marker.exists()


def test_a_plain_yolov5_state_dict_is_detected_and_reported(tmp_path):
    torch.manual_seed(0)
    model = build_model("yolov5n", num_classes=4)
    with torch.no_grad():
        w = model.model[2].cv1.conv.weight
        w[w.abs() < w.abs().median()] = 0.0
    torch.save(model.state_dict(), tmp_path / "yolov5n_plain.pt")
    loaded = load_checkpoint(tmp_path / "yolov5n_plain.pt", num_classes=2)
    assert loaded.flavour.name == "yolov5n" and loaded.arch == "yolov5n" and loaded.num_classes == 2
    assert loaded.masks["model.2.cv1.conv.weight"].float().mean() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(loaded.model.get_classifier().anchors, model.get_classifier().anchors)
    out = subprocess.run([sys.executable, "-m", "utils.checkpoints", str(tmp_path / "yolov5n_plain.pt")],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "yolov5n (auto-detected)" in out.stdout and "model.2.cv1.conv.weight" in out.stdout


@pytest.mark.parametrize("size", "nsmlx")
def test_each_size_is_told_apart_by_auto_detection(size):
    with torch.device("meta"):
        state = build_model(f"yolov5{size}", num_classes=2).state_dict()
    assert detect_flavour({k: torch.empty(v.shape) for k, v in state.items()}).name == f"yolov5{size}"
    assert detect_flavour({"model": None, "ema": {k: torch.empty(v.shape) for k, v in state.items()}}).name \
        == f"yolov5{size}"
    assert FLAVOURS.get(f"yolov5{size}").arch == f"yolov5{size}"


def test_an_unstripped_last_pt_with_numpy_values_loads(tmp_path):
    """Issue 27 item 5: a run interrupted before its end keeps best_fitness as a numpy array; numpy arrays and
    scalars are data. An object array still goes through the restricted unpickler: a payload in it is refused."""
    import numpy as np

    torch.manual_seed(0)
    model = build_model("yolov5n", num_classes=4)
    last = tmp_path / "last.pt"
    torch.save({"epoch": 3, "best_fitness": np.array([0.42]), "model": model.state_dict(), "ema": None,
                "updates": np.int64(10), "optimizer": None, "opt": {"imgsz": 64}, "git": None, "date": "x"}, last)
    loaded = load_checkpoint(last, keep_classifier=True)
    assert loaded.flavour.name == "yolov5n" and loaded.num_classes == 4
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": model.state_dict(), "best_fitness": np.array([Payload()], dtype=object)}, evil)
    with pytest.raises(UserError, match="runs code"):
        load_checkpoint(evil)

"""Every inference engine of the registry against torch on the same inputs (fp32 and INT8), or -- for an engine
that is not installed here -- the one line that says so. Tolerances: fp32 engines max |logit diff| < 1e-3 and
top-1 agreement 100%; bf16 (OpenVINO's default on AVX-512 BF16 / AMX CPUs) and INT8 top-1 agreement >= 95%."""
import pytest
import torch

from models import build_model
from policies.qat.modules import freeze_bn_stats_, prepare_qat_, quantizable_modules, set_observers_
from utils.deploy import ENGINES, compare_with_torch, engines_latency_ms, export_onnx, load_engine, missing
from utils.errors import UserError
from utils.onnx.engines import DeepSparseEngine
from utils.sparsity import magnitude_prune_


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(fp32 model, its QAT twin, fp32 ONNX, INT8 ONNX, sample inputs) for a 70%-sparse resnet_small."""
    out = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=10).eval()
    magnitude_prune_(model, 0.7)
    qat = build_model("resnet_small", num_classes=10)
    qat.load_state_dict(model.state_dict())
    prepare_qat_(qat, quantizable_modules(qat))
    qat.train()
    freeze_bn_stats_(qat)
    with torch.no_grad():
        for _ in range(4):
            qat(torch.randn(16, 3, 16, 16))
    set_observers_(qat, False)
    qat.eval()
    samples = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return (model, qat, export_onnx(model, out / "fp32.onnx", input_size=16),
            export_onnx(qat, out / "int8.onnx", input_size=16), samples)


@pytest.mark.parametrize("name", ENGINES.names())
def test_each_engine_agrees_with_torch_or_says_in_one_line_that_it_is_missing(name, exported):
    model, qat, fp32, int8, samples = exported
    why = missing(name)
    if why is not None:               # not installed here (deepsparse, end-of-life): the one line, not a traceback
        assert "\n" not in why and name in why and "pip install" in why
        with pytest.raises(UserError, match="not installed|cannot be loaded"):
            load_engine(name, fp32)
        return
    pinned = compare_with_torch(model, fp32, samples, engine=name, precision="f32")
    assert pinned["precision"] == "fp32" and pinned["max_abs_diff"] < 1e-3 and pinned["top1_agreement"] == 1.0, pinned
    default = compare_with_torch(model, fp32, samples, engine=name)
    tolerance = (1e-3, 1.0) if default["precision"] == "fp32" else (float("inf"), 0.95)
    assert default["max_abs_diff"] < tolerance[0] and default["top1_agreement"] >= tolerance[1], default
    quantized = compare_with_torch(qat, int8, samples, engine=name)
    assert quantized["precision"].startswith("int8") and quantized["top1_agreement"] >= 0.95, quantized


def test_a_missing_or_broken_engine_is_one_line(monkeypatch):
    def not_installed():
        raise ImportError("No module named 'deepsparse'")

    def broken():
        raise AttributeError("module 'numpy' has no attribute 'float'")

    for fake, words in ((not_installed, "is not installed"), (broken, "cannot be loaded (AttributeError")):
        monkeypatch.setattr(DeepSparseEngine, "module", classmethod(lambda cls, f=fake: f()))
        why = missing("deepsparse")
        assert why.startswith("engine deepsparse ") and words in why and "\n" not in why
    with pytest.raises(UserError, match="unknown inference engine 'tensorrt'"):
        missing("tensorrt")


def test_engines_take_turns_and_report_their_precision(exported):
    _, _, fp32, int8, samples = exported
    names = [n for n in ENGINES.names() if missing(n) is None]
    timed, used = engines_latency_ms({"fp32": fp32, "int8": int8}, samples[:1].numpy(), names, warmup=1, runs=3)
    assert set(timed) == set(used) == set(names) and "onnxruntime" in names
    assert all(ms > 0 for t in timed.values() for ms in t.values())
    assert all(used[n]["int8"].startswith("int8+") for n in names) and used["onnxruntime"]["fp32"] == "fp32"


def test_openvino_leaves_the_calling_threads_signal_stack_alone(exported):
    """OpenVINO's CPU plugin swaps in a ~10 kB alternate signal stack; with it, the next Python signal handler
    (a DataLoader's SIGCHLD) crashed the test process with SIGSEGV. The engine puts the thread's own back."""
    import ctypes

    from utils.onnx.engines import _StackT

    if missing("openvino"):
        assert "openvino" in missing("openvino")
        return
    libc = ctypes.CDLL(None)

    def altstack() -> tuple:
        s = _StackT()
        assert libc.sigaltstack(None, ctypes.byref(s)) == 0
        return s.ss_sp, s.ss_flags, s.ss_size

    before = altstack()
    engine = load_engine("openvino", exported[2])
    engine.run(exported[4][:2].numpy())
    assert altstack() == before

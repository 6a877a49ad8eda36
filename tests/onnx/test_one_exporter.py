"""One ONNX exporter (issue 28): the deployment export and the linear protocol's feature backends both go through
utils/onnx/export.py, so a fix to exporting (the torch.export fallback, atomic writes) reaches both."""
import re

from utils.paths import REPO_ROOT

LIBRARY = ["models", "policies", "utils"]


def test_only_utils_onnx_export_calls_torch_onnx_export():
    callers = sorted(str(p.relative_to(REPO_ROOT)) for top in LIBRARY for p in (REPO_ROOT / top).rglob("*.py")
                     if re.search(r"torch\.onnx\.export\(", p.read_text(encoding="utf-8")))
    assert callers == ["utils/onnx/export.py"]

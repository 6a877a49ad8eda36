"""notebooks/analysis.ipynb runs top to bottom in the venv's own kernel and is stored without outputs."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from utils.paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "analysis.ipynb"


def python3_kernel_problem() -> str | None:
    """Why the `python3` kernel would not run this interpreter (None when it will)."""
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return "no 'python3' kernelspec: install ipykernel into this interpreter's environment"
    # jupyter_client swaps a bare 'python'/'python3' in argv for sys.executable when launching.
    exe = spec.argv[0]
    if exe not in {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"} \
            and Path(exe).resolve() != Path(sys.executable).resolve():
        return f"the 'python3' kernelspec runs {exe}, not {sys.executable}"
    return None


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_executes():
    assert python3_kernel_problem() is None, python3_kernel_problem()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # every plot cell displays its figure
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "AC/DC (ours)@90%" in html and "WoodFisher@90%" in html

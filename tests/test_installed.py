"""The checkout is an installed package (issue 27, item 9): `make` runs `pip install -e .`, so a user's own script
imports the packages from any folder (the README's recipe-in-your-own-loop example, loading a sparse checkpoint),
and SparseML's command names are console scripts on the virtual environment's PATH."""
import subprocess
import sys
from pathlib import Path

from utils.paths import REPO_ROOT

SCRIPTS = ["sparseml.image_classification.train", "sparseml.image_classification.export_onnx",
           "sparseml.pytorch_vision", "sparseml.yolov5.train", "sparseml.yolov5.export_onnx"]

OWN_LOOP = """
import torch
from policies.recipe.manager import RecipeManager
from utils.checkpoints import load_checkpoint, save_native_checkpoint
from models import build_model
from utils.sparsity import magnitude_prune_

torch.manual_seed(0)
upstream = build_model("resnet_small", num_classes=4)
magnitude_prune_(upstream, 0.9)
save_native_checkpoint("sparse.pt", upstream, arch="resnet_small", arch_kwargs={{}})

loaded = load_checkpoint("sparse.pt", num_classes=3)
model = loaded.model
zeros = {{n: (p == 0).clone() for n, p in model.named_parameters() if p.dim() > 1 and "fc" not in n}}
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loader = [(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))) for _ in range(2)]
manager = RecipeManager.from_yaml({recipe!r}, recipe_args={{"num_epochs": 3}})
optimizer = manager.modify(model, optimizer, steps_per_epoch=len(loader), seed=0, loader=loader)
for epoch in range(manager.max_epochs):
    for inputs, targets in loader:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
manager.finalize(model)
params = dict(model.named_parameters())
assert all(torch.equal(params[n] == 0, z) for n, z in zeros.items()), "a mask moved"
print("ok", f"{{loaded.report.global_sparsity:.2f}}")
"""


def test_a_users_own_loop_imports_the_packages_from_any_folder(tmp_path):
    recipe = REPO_ROOT / "configs" / "recipes" / "demo_sparse_transfer.yaml"
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", OWN_LOOP.format(recipe=str(recipe))], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", "0.90"]


def test_sparsemls_command_names_are_console_scripts(tmp_path):
    """Each name is an installed script whose entry point imports; one runs (each start imports torch: seconds)."""
    from importlib.metadata import entry_points

    installed = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("sparseml.")}
    assert sorted(installed) == sorted(SCRIPTS), "run make (pip install -e .)"
    for name in SCRIPTS:
        assert (Path(sys.executable).parent / name).is_file(), name
        assert callable(installed[name].load()), name
    out = subprocess.run([str(Path(sys.executable).parent / "sparseml.yolov5.train"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "usage: sparseml.yolov5.train" in out.stdout, out.stdout + out.stderr

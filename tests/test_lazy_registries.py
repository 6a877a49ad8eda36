"""Registries of YAML files load on first use (issue 28): a broken dataset or flavour file fails the command that
reads it, with the file and key, instead of every import of the package (which broke even `--help`)."""
import subprocess
import sys

from utils.paths import REPO_ROOT

BROKEN = """
import sys
from pathlib import Path
import utils.paths as paths
paths.DATASET_DIR = paths.FLAVOUR_DIR = Path(sys.argv[1])
import utils.data, utils.checkpoints, utils.runs       # nothing read yet: imports work
print("imported")
from utils.errors import UserError
for what in (lambda: utils.data.get_dataset_spec("cifar10"), lambda: utils.checkpoints.FLAVOURS.names()):
    try:
        what()
    except UserError as err:
        print("error:", err)
"""


def test_a_broken_yaml_file_fails_its_reader_not_every_import(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: broken\nnum_classes: [not a number\n")
    out = subprocess.run([sys.executable, "-c", BROKEN, str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "imported"
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 2 and all("broken.yaml" in e for e in errors), out.stdout


def test_the_shipped_registries_fill_on_first_use():
    from utils.checkpoints import FLAVOURS
    from utils.data import DATASETS

    assert "cifar10" in DATASETS and "acdc_resnet50" in FLAVOURS and len(DATASETS.names()) >= 17

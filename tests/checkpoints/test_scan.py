"""Pickles in both torch formats are scanned before any advice is given; conversion never runs what a file names."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.checkpoints import load_checkpoint
from utils.checkpoints.files import convert_checkpoint
from utils.checkpoints.scan import untrusted_globals
from utils.errors import UserError
from utils.paths import REPO_ROOT


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _files(tmp_path: Path, *, legacy: bool) -> tuple[Path, Path, Path]:
    """(malicious, benign, marker): a YOLOv5-style pair in one torch format; the marker appears if code ran."""
    marker = tmp_path / "PWNED"
    state = {"conv.weight": torch.arange(6.0).reshape(2, 3)}
    kind = "legacy" if legacy else "zip"
    evil, benign = tmp_path / f"evil_{kind}.pt", tmp_path / f"benign_{kind}.pt"
    torch.save({"state_dict": state, "x": _Payload(marker)}, evil, _use_new_zipfile_serialization=not legacy)
    torch.save({"state_dict": state, "args": Path("/runs/exp")}, benign, _use_new_zipfile_serialization=not legacy)
    return evil, benign, marker


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_both_formats_name_what_they_would_call_without_running_it(tmp_path, legacy):
    evil, benign, marker = _files(tmp_path, legacy=legacy)
    assert "posix.system" in untrusted_globals(evil) or "nt.system" in untrusted_globals(evil)
    assert untrusted_globals(benign) == ["pathlib.PosixPath"]
    with pytest.raises(UserError, match=r"would call (posix|nt)\.system.*do not use this file") as refused:
        load_checkpoint(evil)
    assert "torch.load(" not in str(refused.value) and "trusted_globals" not in str(refused.value)
    with pytest.raises(UserError, match=r"refusing to unpickle pathlib\.PosixPath") as benign_refusal:
        load_checkpoint(benign)
    assert "--convert" in str(benign_refusal.value) and "weights_only=False" not in str(benign_refusal.value)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_convert_keeps_the_tensors_and_refuses_a_payload(tmp_path, legacy):
    evil, benign, marker = _files(tmp_path, legacy=legacy)
    out = tmp_path / "clean.pt"
    assert convert_checkpoint(benign, out) == ["pathlib.PosixPath"]
    clean = torch.load(out, weights_only=True)      # nothing but plain data left
    assert torch.equal(clean["state_dict"]["conv.weight"], torch.arange(6.0).reshape(2, 3))
    assert clean["args"] is None
    with pytest.raises(UserError, match="do not use this file"):
        convert_checkpoint(evil, tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists() and not marker.exists()


def test_the_command_line_refuses_a_legacy_payload_in_one_line(tmp_path):
    evil, _, marker = _files(tmp_path, legacy=True)
    out = subprocess.run([sys.executable, "-m", "utils.checkpoints", str(evil)], cwd=REPO_ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and "system" in out.stderr and not marker.exists()

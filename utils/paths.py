"""Where the repository's own files live, computed once: its root and the config folders."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
FLAVOUR_DIR = CONFIG_DIR / "checkpoints"
DATASET_DIR = CONFIG_DIR / "datasets"
TRAINER_DIR = CONFIG_DIR / "trainers"
PROBE_DIR = CONFIG_DIR / "probes"
RECIPE_DIR = CONFIG_DIR / "recipes"
STUDY_DIR = CONFIG_DIR / "studies"
PAPER_RESULTS_DIR = REPO_ROOT / "raw_results"

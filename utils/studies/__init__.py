"""Whole studies: study files, their cells, the sweep that runs them, the executors, and the demo.

    run_study("configs/studies/demo.yaml", jobs=2)     # sweep.py calls this; `make demo` runs two with run_studies
"""
from utils.studies.cells import Cell, cell_key, cell_options, cell_status, expand, run_cell
from utils.studies.demo import DEMO_STUDIES, DEMO_STUDY, DETECTION_STUDY, format_table, side_by_side
from utils.studies.executors import EXECUTORS, get_executor
from utils.studies.study import MODES, DatasetEntry, FullMode, LinearMode, Study, UpstreamSpec, load_study
from utils.studies.sweep import run_studies, run_study, validate_cells, write_study_report
from utils.studies.upstreams import produce_key, resolve_upstreams, upstream_order

__all__ = ["Cell", "DEMO_STUDIES", "DEMO_STUDY", "DETECTION_STUDY", "DatasetEntry", "EXECUTORS", "FullMode",
           "LinearMode", "MODES", "Study", "UpstreamSpec", "cell_key", "cell_options", "cell_status", "expand",
           "format_table", "get_executor", "load_study", "produce_key", "resolve_upstreams", "run_cell", "run_studies",
           "run_study", "side_by_side", "upstream_order", "validate_cells", "write_study_report"]

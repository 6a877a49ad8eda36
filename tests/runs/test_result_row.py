"""One result row type for both run kinds: results.csv's columns derive from it, and a row lacking one is refused."""
from dataclasses import fields

import pytest

from utils.runs import RESULT_COLUMNS, ResultRow

ROW = dict(dset="dtd", model="AC/DC", sparsity=0.9, seed=1, val_acc=0.71, finetuning="linear", arch="resnet50",
           checkpoint="acdc.pth", flavour="acdc", recipe="", solver="lbfgs", lr="", epochs="", batch_size="",
           measured_sparsity=0.9, run_dir="/r", git_commit="abc", finished_at="2026-12-07T00:00:00",
           task="classification", map="", map50="", precision="")


def test_the_columns_are_the_row_types_fields_the_papers_schema_first():
    assert RESULT_COLUMNS == [f.name for f in fields(ResultRow) if f.name != "details"]
    assert RESULT_COLUMNS[:5] == ["dset", "model", "sparsity", "seed", "val_acc"]


def test_a_row_lacking_a_column_is_refused_and_details_follow_the_columns():
    with pytest.raises(TypeError):
        ResultRow(**{k: v for k, v in ROW.items() if k != "precision"})
    record = ResultRow(**ROW, details={"l2": 0.01}).record()
    assert list(record) == [*RESULT_COLUMNS, "l2"] and record["val_acc"] == 0.71

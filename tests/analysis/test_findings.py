"""'What this shows' (issue 27, item 6): the paper's two main findings checked on a set of results, computed from
the numbers, with the paper's figures beside -- and the verdicts change when the numbers do."""
from __future__ import annotations

import pandas as pd

from utils.analysis import load_results, write_report
from utils.analysis.findings import findings_section, full_vs_linear, within_noise


def results(tmp_path, *, full_dense=0.95, linear_dense=0.90, acdc80_full=0.945, gmp80_full=0.948, seeds=(1, 2)):
    """Dense, AC/DC and GMP at 80/90% on two datasets, full and linear, each seed 0.2 points apart."""
    lines = ["dset,model,sparsity,seed,val_acc,finetuning,arch"]
    cells = {("full", "Dense", 0.0): full_dense, ("linear", "Dense", 0.0): linear_dense,
             ("full", "AC/DC", 0.8): acdc80_full, ("full", "GMP", 0.8): gmp80_full,
             ("full", "AC/DC", 0.9): full_dense - 0.05, ("full", "GMP", 0.9): full_dense - 0.04,
             ("linear", "AC/DC", 0.8): linear_dense - 0.01, ("linear", "GMP", 0.8): linear_dense - 0.002,
             ("linear", "AC/DC", 0.9): linear_dense - 0.03, ("linear", "GMP", 0.9): linear_dense - 0.02}
    for dset in ("digits", "shapes"):
        for (mode, method, sparsity), value in cells.items():
            for i, seed in enumerate(seeds):
                lines.append(f"{dset},{method},{sparsity},{seed},{value + 0.002 * i:.4f},{mode},resnet_small")
    path = tmp_path / "results.csv"
    path.write_text("\n".join(lines) + "\n")
    return load_results([path])


def test_both_findings_hold_when_the_numbers_say_so(tmp_path):
    text = "\n".join(findings_section(results(tmp_path), paper=load_results()))
    assert "## What this shows" in text
    assert "**Full fine-tuning above linear probing** -- holds here" in text
    assert "on 2 of 2 dataset(s) (mean 95.1% vs 90.1%)" in text
    assert "the paper: full above linear on" in text                    # computed from raw_results/
    assert "within about 1 point of Dense under full fine-tuning** -- holds here: AC/DC -0.5 ± 0.2, GMP -0.2 ± 0.2" \
        in text
    assert "; the paper: AC/DC" in text
    assert "Full fine-tuning: within noise of Dense on every dataset -- 80%: AC/DC, GMP; 90%: none." in text
    assert "Methods by mean rank here: GMP > AC/DC" in text


def test_the_verdicts_follow_the_numbers(tmp_path):
    """The demo's old state: full fine-tuning below the linear probe, sparse models far below dense."""
    text = "\n".join(findings_section(results(tmp_path, full_dense=0.87, linear_dense=0.95, acdc80_full=0.80,
                                              gmp80_full=0.82), paper=None))
    assert "**Full fine-tuning above linear probing** -- does not hold here" in text
    assert "on 0 of 2 dataset(s)" in text and "; the paper:" not in text
    assert "-- does not hold here: AC/DC -7.0 ± 0.2, GMP -5.0 ± 0.2 points" in text


def test_a_difference_just_past_one_point_within_two_standard_errors_holds_within_noise(tmp_path):
    """Seeds 2 points apart: 1.3 points down is not distinguishable from 1 point down."""
    lines = ["dset,model,sparsity,seed,val_acc,finetuning,arch"]
    for dset in ("digits", "shapes"):
        for seed, shift in ((1, 0.0), (2, 0.02)):
            lines += [f"{dset},Dense,0.0,{seed},{0.95 + shift:.4f},full,m",
                      f"{dset},GMP,0.8,{seed},{0.937 + shift:.4f},full,m"]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    text = "\n".join(findings_section(load_results([tmp_path / "r.csv"])))
    assert "-- holds within noise (a difference of 1 point is inside two standard errors) here: GMP -1.3 ± 2.0" in text


def test_noise_needs_two_seeds_or_a_small_difference():
    row = lambda mean, std, n: pd.Series({"val_acc_mean": mean, "val_acc_std": std, "n_seeds": n})  # noqa: E731
    assert within_noise(row(0.900, 0.01, 3), row(0.905, 0.01, 3)) is True          # 0.5 points
    assert within_noise(row(0.90, 0.03, 3), row(0.93, 0.03, 3)) is True            # 3 points, 2 SE = 4.9
    assert within_noise(row(0.90, 0.001, 3), row(0.93, 0.001, 3)) is False
    assert within_noise(row(0.90, float("nan"), 1), row(0.93, 0.01, 3)) is None    # one seed: no estimate


def test_full_vs_linear_needs_both_modes(tmp_path):
    data = results(tmp_path)
    assert full_vs_linear(data[data["finetuning"] == "full"], "resnet_small") is None


def test_the_report_starts_with_what_it_shows(tmp_path):
    write_report(results(tmp_path), tmp_path / "report", figures=False)
    report = (tmp_path / "report" / "report.md").read_text()
    assert report.index("## What this shows") < report.index("## Full fine-tuning, resnet_small")


def test_results_without_dense_say_what_is_missing(tmp_path):
    data = results(tmp_path)
    text = "\n".join(findings_section(data[data["method"] != "Dense"]))
    assert "## What this shows" in text and "have no `Dense` rows" in text and "--model_label Dense" in text

"""The demo's report keeps what the demo prints (issue 27, item 6): the side-by-side table with the measured
sparsity and the exported detector's lines go into report.md, replaced (not repeated) by the next demo."""
import pandas as pd

from utils.studies.demo import DEMO_SECTIONS, add_demo_sections, side_by_side


def test_the_demo_sections_are_appended_once_and_replaced(tmp_path):
    results = tmp_path / "results.csv"
    results.write_text("dset,model,sparsity,seed,val_acc,finetuning,measured_sparsity,task,map\n"
                       "digits,Dense,0.0,0,0.97,full,0.0,classification,\n"
                       "digits,GMP,0.9,0,0.95,full,0.9001,classification,\n"
                       "digits,GMP,0.9,0,0.94,linear,0.9001,classification,\n")
    report = tmp_path / "report.md"
    report.write_text("# Transfer results\n\n## What this shows\n")
    table = side_by_side(results)
    add_demo_sections(report, table, ["ONNX fp32: 1.2 MB, top-1 agreement 100.00%", "latency: 0.5 ms"])
    first = report.read_text()
    assert first.startswith("# Transfer results\n\n## What this shows\n") and first.count(DEMO_SECTIONS) == 1
    assert "| GMP@90% | 95.0 | 94.0 | 0.9001 |" in first and "| Dense@0% | 97.0 |" in first
    assert "- ONNX fp32: 1.2 MB, top-1 agreement 100.00%" in first and "- latency: 0.5 ms" in first
    add_demo_sections(report, table, None)                     # the next demo: replaced, not appended again
    second = report.read_text()
    assert second.count(DEMO_SECTIONS) == 1 and second.count("## Full and linear transfer side by side") == 1
    assert "latency: 0.5 ms" not in second
    assert isinstance(table, pd.DataFrame)


def test_the_demo_prints_what_its_report_shows(tmp_path):
    from utils.studies.demo import what_it_shows

    report = tmp_path / "report.md"
    report.write_text("# Transfer results\n\n## What this shows\n\nIntro.\n\n### resnet_small\n\n1. **Full fine-tuning "
                      "above linear probing** -- holds here.\n\n## Full fine-tuning, resnet_small\n\n| table |\n")
    shown = what_it_shows(report)
    assert shown.startswith("what this shows:\nIntro.") and "1. Full fine-tuning above linear probing -- holds" in shown
    assert "| table |" not in shown and "**" not in shown
    report.write_text("# Transfer results\n")
    assert what_it_shows(report) == ""

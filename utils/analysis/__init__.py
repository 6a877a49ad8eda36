"""Results analysis -- pandas and matplotlib only, no torch: tidy results (the paper's raw_results/ and any
results.csv), paper-style tables, figures, and the report that writes them all.

    df = load_results()                      # the paper's raw results
    summary = summarize(df)
    paper_table(summary, finetuning="full", arch="ResNet-50")
"""
from utils.analysis.plots import (
                                  method_colors,
                                  plot_accuracy_vs_sparsity,
                                  plot_average_vs_sparsity,
                                  plot_delta_heatmap,
                                  save_figure,
)
from utils.analysis.report import analyze_files, score_title, write_report
from utils.analysis.results import (
                                  ARCH_ORDER,
                                  DATASET_ORDER,
                                  DENSE,
                                  FINETUNING_MODES,
                                  KEY_COLUMNS,
                                  METHOD_ORDER,
                                  PAPER_RESULTS_DIR,
                                  TIDY_COLUMNS,
                                  arch_label,
                                  check_tidy,
                                  dataset_label,
                                  find_duplicates,
                                  load_results,
                                  read_result_file,
                                  resolve_duplicates,
                                  result_files,
                                  sparsity_label,
)
from utils.analysis.tables import (
                                  AVERAGE,
                                  FINETUNING_TITLES,
                                  accuracy_table,
                                  average_over_datasets,
                                  combos,
                                  dataset_order,
                                  delta_table,
                                  latex_escape,
                                  mean_rank,
                                  method_order,
                                  paper_table,
                                  rank_table,
                                  row_label,
                                  select,
                                  slug,
                                  summarize,
                                  to_latex,
                                  to_markdown,
                                  wide_table,
)

__all__ = ["ARCH_ORDER", "AVERAGE", "DATASET_ORDER", "DENSE", "FINETUNING_MODES", "FINETUNING_TITLES", "KEY_COLUMNS",
           "METHOD_ORDER", "PAPER_RESULTS_DIR", "TIDY_COLUMNS", "accuracy_table", "analyze_files", "arch_label",
           "average_over_datasets", "check_tidy", "combos", "dataset_label", "dataset_order", "delta_table",
           "find_duplicates", "latex_escape", "load_results", "mean_rank", "method_colors", "method_order",
           "paper_table", "plot_accuracy_vs_sparsity", "plot_average_vs_sparsity", "plot_delta_heatmap",
           "rank_table", "read_result_file", "resolve_duplicates", "result_files", "row_label", "save_figure",
           "score_title", "select", "slug", "sparsity_label", "summarize", "to_latex", "to_markdown", "wide_table",
           "write_report"]

"""Tables and figures of the study from result CSVs: python analyze.py [FILES_OR_DIRS...] --out DIR.

With no files it analyses the paper's raw_results/. Writes report.md (all tables, figure links),
summary.csv, mean_rank.csv, tables/*.{csv,tex}, figures/*.{png,pdf}, and prints every path written.
"""
from __future__ import annotations

import argparse

from utils.analysis import PAPER_RESULTS_DIR, analyze_files
from utils.cli import setup_logging
from utils.errors import exit_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help=f"result CSVs or folders of them (default: {PAPER_RESULTS_DIR})")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--duplicates", choices=["first", "last", "all", "error"], default="first",
                        help="rows with the same finetuning/arch/dataset/method/sparsity/seed: keep which")
    parser.add_argument("--no-figures", action="store_true", help="write tables only")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.verbose, quiet=True)
    written = analyze_files(args.files or [PAPER_RESULTS_DIR], args.out, duplicates=args.duplicates,
                            figures=not args.no_figures)
    print("\n".join(map(str, written)))


if __name__ == "__main__":
    main()

"""Run a study and print its results side by side: `python -m utils.studies [--study FILE] [--jobs N]`.

Without --study it runs the demo study (configs/studies/demo.yaml), which is what `make demo` does.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from utils.cli import setup_logging
from utils.errors import exit_on_user_error
from utils.studies import DEMO_STUDY, format_table, load_study, run_study, side_by_side


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default=str(DEMO_STUDY), help="the study file to run (default: the demo)")
    p.add_argument("--jobs", type=int, default=0,
                   help="local: runs at once (default 0: one per GPU, else one per core up to 4, each with its share "
                        "of the cores)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = p.parse_args(argv)
    setup_logging(args.verbose, quiet=True)
    start = time.perf_counter()
    run_study(args.study, jobs=args.jobs, progress=print)
    root = Path(load_study(args.study).experiment_root)
    print("\nFull and linear transfer from the upstream models, side by side:")
    print(format_table(side_by_side(root / "results.csv")))
    print(f"\nresults: {root / 'results.csv'}\nreport:  {root / 'report' / 'report.md'}")
    print(f"took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

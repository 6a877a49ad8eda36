"""Run a whole study (checkpoints x datasets x modes x seeds) from one file; finished cells are skipped.

    python sweep.py configs/studies/demo.yaml [--executor local|slurm|submitit-local] [--jobs N]
                    [--dry-run] [--retry-failed] [--rerun-stale] [--no-wait] [--no-report]
"""
from __future__ import annotations

import argparse
import sys

from utils.cli import setup_logging
from utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="a study file: configs/studies/*.yaml")
    p.add_argument("--executor", default="local", help="local (default), slurm, or submitit-local")
    p.add_argument("--jobs", type=int, default=0,
                   help="local: runs at once (default 0: one per GPU, else one per core up to 4, each with its share "
                        "of the cores)")
    p.add_argument("--dry-run", action="store_true",
                   help="list each cell: done / queued / running (Slurm's view) / to do / failed; run nothing")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.add_argument("--rerun-stale", action="store_true",
                   help="run again the done cells whose data changed after they ran (their runs are set aside)")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and exit without waiting")
    p.add_argument("--no-report", action="store_true", help="skip the Markdown report at the end")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose, quiet=True)
    from utils.studies import run_study  # here, not at the top: --help stays fast

    counts = run_study(args.study, executor=args.executor, jobs=args.jobs, dry_run=args.dry_run,
                       retry_failed=args.retry_failed, wait=not args.no_wait, report=not args.no_report,
                       rerun_stale=args.rerun_stale, progress=print)
    if not args.dry_run and (counts["failed"] or counts["blocked"] or counts["interrupted"]):
        lost = (f", {counts['interrupted']} job(s) ended without a result (cancelled or killed: they resume from "
                "their last checkpoint)" if counts["interrupted"] else "")
        print(f"error: sweep incomplete: {counts['failed']} cell(s) failed, {counts['blocked']} upstream(s) missing"
              f"{lost} (each named above); fix them and run the sweep again: finished cells are skipped",
              file=sys.stderr)
        sys.exit(1)
    return counts


if __name__ == "__main__":
    main()

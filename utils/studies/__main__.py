"""Run studies and print their results side by side:
`python -m utils.studies [--study FILE ...] [--jobs N] [--rerun-stale]`.

Without --study it runs the demo (configs/studies/demo.yaml and demo_detection.yaml, with the detection data
made first and the sparsest detector exported and timed at the end), which is what `make demo` does.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from utils.cli import setup_logging
from utils.deploy import describe_deployment
from utils.errors import exit_on_user_error
from utils.studies import load_study, run_studies
from utils.studies.demo import (
    DEMO_STUDIES,
    DETECTION_STUDY,
    add_demo_sections,
    deploy_sparsest,
    format_table,
    prepare_detection_data,
    side_by_side,
    what_it_shows,
)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", action="append", help="a study file to run (repeat for several, run side by side; "
                                                    "default: the demo)")
    p.add_argument("--jobs", type=int, default=0, help="runs at once (default 0: one per GPU, else one per core "
                                                       "up to 4)")
    p.add_argument("--rerun-stale", action="store_true",
                   help="run again the done cells whose data changed after they ran (their runs are set aside)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = p.parse_args(argv)
    setup_logging(args.verbose, quiet=True)
    start = time.perf_counter()
    studies = [Path(s) for s in args.study or DEMO_STUDIES]
    detection_demo = any(s.resolve() == DETECTION_STUDY.resolve() for s in studies)
    if detection_demo:
        prepare_detection_data()
    deployed = {}

    def deploy(study: Path) -> None:       # the demo's detector is exported while the other study still runs ...
        if detection_demo and study.resolve() == DETECTION_STUDY.resolve():
            deployed[study] = deploy_sparsest(Path(load_study(study).experiment_root) / "results.csv",
                                              num_samples=16, latency=False)

    run_studies(studies, jobs=args.jobs, progress=print, then=deploy, rerun_stale=args.rerun_stale)
    for study in deployed:                 # ... and timed once nothing else runs
        deployed[study] = deploy_sparsest(Path(load_study(study).experiment_root) / "results.csv", num_samples=16)
    for study in studies:
        root = Path(load_study(study).experiment_root)
        table = side_by_side(root / "results.csv")
        print(f"\n{study}: transfer from the upstream models, side by side:")
        print(format_table(table))
        print(f"results: {root / 'results.csv'}\nreport:  {root / 'report' / 'report.md'}")
        lines = describe_deployment(deployed[study]) if deployed.get(study) else None
        if lines:
            print(f"\nthe sparsest transferred detector, exported ({deployed[study]['checkpoint']}):")
            print("\n".join(lines))
        if (root / "report" / "report.md").is_file():
            add_demo_sections(root / "report" / "report.md", table, lines)
            shows = what_it_shows(root / "report" / "report.md")
            if shows:
                print(f"\n{shows}")
    print(f"\ntook {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

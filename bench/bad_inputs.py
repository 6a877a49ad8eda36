"""A battery of bad inputs through every command line, counted the way issue 12 counted them.

    python bench/bad_inputs.py [--jobs 2] [--only SUBSTRING] [-v]

Each case builds its files in a fresh folder, runs one command as a user would (a subprocess), and is
judged by what the user sees:
  clear      exit code != 0, no traceback, one `error:` line (argparse's usage + error counts as clear)
  traceback  a Python traceback reached the user
  unclear    exit code != 0 without a traceback, but not one `error:` line naming the culprit
  silent     exit code 0 for an input that must be refused
  recovered  (cases that must succeed: a damaged cache, a CSV without its final newline) it did, correctly
  lost       such a case failed, or left results.csv with a lost, fused or doubled row
Prints one line per case and the totals; exits 1 unless every refusal is clear and every recovery worked.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bad_inputs_cases import ROOT, Case, cases
from bad_inputs_recent import recent_cases

# -------------------------------------------------------------------------------- judging

def judge(case: Case, out: subprocess.CompletedProcess, folder: Path) -> tuple[str, str]:
    err = out.stderr
    if case.recover is not None:
        problem = case.recover(folder, out) if "Traceback" not in err else "traceback"
        return ("lost", problem) if problem else ("recovered", "")
    if "Traceback" in err or "Traceback" in out.stdout:
        return "traceback", err.strip().splitlines()[-1] if err.strip() else ""
    if out.returncode == 0:
        return "silent", "exit 0"
    if (folder / "PWNED").exists():
        return "traceback", "code ran"
    errors = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    if len(errors) != 1 or (case.must and case.must.lower() not in errors[0].lower()):
        return "unclear", (errors or err.strip().splitlines()[-1:] or ["(nothing)"])[0][:160]
    return "clear", errors[0][:160]


def run_case(case: Case, base: Path, env: dict[str, str]) -> tuple[Case, str, str, float]:
    folder = base / case.name.replace(" ", "_").replace("/", "_").replace(":", "")
    folder.mkdir(parents=True)
    start = time.perf_counter()
    try:
        for step in case.before:
            out = step(folder)
        argv = case.argv(folder)
        out = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        verdict, detail = judge(case, out, folder)
    except Exception as err:  # noqa: BLE001 -- a broken case is reported, the battery goes on
        verdict, detail = "broken case", f"{type(err).__name__}: {err}"
    return case, verdict, detail, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", default="", help="run the cases whose name contains this")
    p.add_argument("-v", "--verbose", action="store_true", help="print each case's error line")
    args = p.parse_args()
    chosen = [c for c in cases() + recent_cases() if args.only in c.name]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache"), "PYTHONPATH": str(ROOT),
               "WANDB_MODE": "disabled"}
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: run_case(c, Path(tmp), env), chosen))
    totals: dict[str, int] = {}
    for case, verdict, detail, seconds in results:
        totals[verdict] = totals.get(verdict, 0) + 1
        shown = f"  {detail}" if args.verbose or verdict not in ("clear", "recovered") else ""
        print(f"{verdict:<10} {case.name}{shown}")
    refusals = sum(1 for c in chosen if c.recover is None)
    print(f"\n{len(chosen)} bad inputs: {refusals} to refuse, {len(chosen) - refusals} to recover from")
    print("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    good = totals.get("clear", 0) + totals.get("recovered", 0)
    return 0 if good == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())

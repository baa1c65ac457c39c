"""The whole study in one command: the comparison, then the ablation, then the horizon.

Each step is its script with ``--jobs`` training processes (``study.train_in_processes``) and
``--publish``; the ablation and the horizon take their rates from the comparison's table and
reuse its runs where they are the same run (``study.borrow``), so the comparison comes first.
Every step resumes, so a killed study resumes too: run the same command again.  At the end it
prints the study's cost: its runs and their CPU time, from the three studies' ``cost.json``
files, and this invocation's wall time.

    python scripts/run_study.py [--root studies] [--jobs 2] [--publish scripts/results]
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def steps(root: str, jobs: int, publish: str) -> list[list[str]]:
    compare, ablation = os.path.join(root, "compare"), os.path.join(root, "ablation")
    table = os.path.join(compare, "comparison.csv")
    common = ["--jobs", str(jobs), "--publish", publish]
    return [
        ["compare_optimizers.py", "--out", compare, *common],
        ["ablation.py", "--out", ablation, "--lr-from", table, *common],
        ["horizon.py", "--out", os.path.join(root, "horizon"), "--lr-from", table,
         "--ablation", ablation, *common],
    ]


def cpu_hours(root: str) -> tuple[int, float]:
    """(runs, CPU hours) over every trained run under ``root``'s studies."""
    runs, cpu = 0, 0.0
    for name in ("compare", "ablation", "horizon"):
        base = os.path.join(root, name, "runs")
        for job in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            path = os.path.join(base, job, "cost.json")
            if os.path.exists(path):
                with open(path) as fh:
                    cpu += json.load(fh)["cpu_seconds"]
                runs += 1
    return runs, cpu / 3600


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="studies",
                        help="the studies' parent directory (compare/, ablation/, horizon/)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--publish", default="scripts/results")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be an integer >= 1")
    start = time.time()
    for step in steps(args.root, args.jobs, args.publish):
        print(f"[study] {' '.join(step)}", flush=True)
        code = subprocess.call([sys.executable, os.path.join(HERE, step[0]), *step[1:]])
        if code:
            print(f"[study] {step[0]} failed (exit code {code}); run again to resume",
                  flush=True)
            return code
    runs, hours = cpu_hours(args.root)
    print(f"[study cost] {runs} runs trained, {hours:.2f} CPU hours; this invocation "
          f"{(time.time() - start) / 3600:.2f} hours of wall time", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

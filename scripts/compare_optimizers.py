"""Nested (defaults) vs Adam, AdamW, NAdam, SGD with momentum and Lion, on every embedded workload.

Protocol (the same for every optimizer; nothing is tuned for ours):
1. learning-rate search: each optimizer's Keras default times 1/3, 1, 3 and 10 (four trials each),
   seed 0, on the study-sized workloads of ``nested_research.study.WORKLOADS``; the best rate is
   the one with the highest final validation accuracy;
2. final runs: seeds 0, 1, 2 at that rate (seed 0 reuses the search run).
Writes ``comparison.md``, ``comparison.csv``, ``comparison_curves.png`` (validation loss per epoch,
mean +- std over seeds) and ``comparison_lr.png`` (LR sensitivity) into ``--out``.

    python scripts/compare_optimizers.py [--out studies/compare] [--quick]

A killed study resumes where it stopped (finished runs are reused).
"""

import argparse
import os
import sys

from nested_research import study

OPTIMIZERS = ["nested", "adam", "adamw", "nadam", "sgd", "lion"]
LR_FACTORS = [1 / 3, 1.0, 3.0, 10.0]
SEEDS = [0, 1, 2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="studies/compare")
    parser.add_argument("--quick", action="store_true",
                        help="tiny runs (a few steps), 2 learning rates and 2 seeds: a smoke test")
    parser.add_argument("--workloads", nargs="*", default=None)
    parser.add_argument("--optimizers", nargs="*", default=OPTIMIZERS)
    args = parser.parse_args(argv)
    workloads = study.QUICK_WORKLOADS if args.quick else study.WORKLOADS
    names = args.workloads or list(workloads)
    factors = LR_FACTORS[1:3] if args.quick else LR_FACTORS
    seeds = SEEDS[:2] if args.quick else SEEDS

    finals = []
    tuning = []
    for workload in names:
        for opt in args.optimizers:
            base = study.default_lr(opt)
            trials = []
            for f in factors:
                lr = base * f
                job = study.Job(workload, opt, 0, workloads[workload] + [
                    f"optimizer={opt}", f"optimizer.learning_rate={lr:.6g}"], lr=lr, group="tune")
                outcome = study.run_job(job, args.out)
                trials.append(outcome)
                print(f"[tune] {workload} {opt} lr={lr:.3g}: "
                      f"{outcome.results['metrics']['val/accuracy'] if outcome.results else outcome.error}",
                      flush=True)
            tuning += trials
            ok = [t for t in trials if t.results]
            best = max(ok, key=lambda t: t.results["metrics"]["val/accuracy"]) if ok else trials[1]
            if best is trials[0] or best is trials[-1]:
                print(f"[tune] note: {workload} {opt}: best rate {best.job.lr:.3g} is at the "
                      "edge of the grid", flush=True)
            for seed in seeds:
                job = study.Job(workload, opt, seed, best.job.overrides, lr=best.job.lr,
                                group="final")
                finals.append(best if seed == 0 else study.run_job(job, args.out))
    rows = study.summarize(finals, baselines=set(args.optimizers) - {"nested"})
    table = study.write_tables(rows, args.out, "comparison", "optimizer")
    study.plot_curves(finals, os.path.join(args.out, "comparison_curves.png"))
    study.plot_lr_sensitivity(tuning, os.path.join(args.out, "comparison_lr.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

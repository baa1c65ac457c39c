"""Every optimizer of conf/optimizer on every study workload, scored as AlgoPerf scores.

Protocol (the same for every optimizer; nothing is tuned for ours):
1. learning-rate search (``nested_research.studies.lr_search``): the optimizer's default rate (its conf
   file) times 1/3, 1 and 3, extended by a factor of 3 past an edge while the best rate sits there
   (at most 3 extensions), seed 0; the best rate has the best final validation metric;
2. final runs: seeds 0, 1, 2 at that rate (seed 0 reuses the search run);
3. scoring (``nested_research.studies.scoring``): per workload a target from the best baseline (every
   optimizer but ``nested``), steps and seconds to it, ratios to the fastest, and each
   optimizer's performance-profile score over the workloads.
Writes ``comparison.md``, ``comparison.csv`` (a row per workload and optimizer),
``comparison_curves.png``, ``comparison_lr.png`` and ``comparison_profile.png`` into ``--out``
after every optimizer (so partial results land), copies them to ``--publish`` if given, and
prints the study's cost (runs and CPU time, the resumed runs' included).

    python -m nested_research.studies.comparison [--out studies/compare] [--quick]
        [--workloads ...] [--optimizers ...] [--jobs 2] [--publish scripts/results] [--report]

A killed study resumes where it stopped (finished runs are reused).
"""

import os
import sys

from nested_research.studies import command, lr_search, plots as study_plots, runner as study

OPTIMIZERS = study.optimizers()
SEEDS = [0, 1, 2]
STEM = "comparison"


def tune(workload: str, opt: str, overrides: list, out: str, quick: bool, train: bool = True):
    """The learning-rate search of ``opt`` on ``workload``: ``(SearchResult, trials)``."""
    metric, direction = study.metric_of(workload)
    trials = {}

    def trial(lr):
        job = study.Job(workload, opt, 0, overrides + [f"optimizer={opt}",
                                                      f"optimizer.learning_rate={lr:.6g}"],
                        lr=lr, group="tune")
        outcome = trials[lr] = study.run_job(job, out, train=train)
        value = study.final_value(outcome.results, metric)
        if outcome.error == study.NOT_RUN:
            return value
        print(f"[tune] {workload} {opt} lr={lr:.3g}: {metric}="
              f"{value if outcome.results else outcome.error}", flush=True)
        return value

    kw = dict(grid=(1.0, 3.0), max_extensions=0) if quick else {}
    found = lr_search.search(trial, study.default_lr(opt), direction, **kw)
    if found.at_edge and not quick and train:
        print(f"[tune] note: {workload} {opt}: best rate {found.best_lr:.3g} is still at the "
              "edge after the search's extensions", flush=True)
    return found, trials


def write(finals, tuning, searches, out, publish, baselines):
    rows = study.summarize(finals, baselines=baselines)
    for row in rows:
        found = searches[row["workload"], row["label"]]
        row["lr_trials"] = " ".join(f"{lr:.3g}" for lr in found.rates)
        row["lr_at_edge"] = found.at_edge
    table = study.write_tables(rows, out, STEM, "optimizer")
    study_plots.plot_curves(finals, os.path.join(out, f"{STEM}_curves.png"))
    study_plots.plot_lr_sensitivity(tuning, os.path.join(out, f"{STEM}_lr.png"))
    study_plots.plot_profiles(rows, os.path.join(out, f"{STEM}_profile.png"))
    if publish:
        study.publish(out, publish, STEM)
    return table


def main(argv=None) -> int:
    parser = command.parser(
        __doc__, "studies/compare",
        quick="tiny runs (a few steps), 2 learning rates and 2 seeds: a smoke test",
        report="train nothing: tables from the runs that exist, over the (workload, optimizer) "
               "pairs whose search and seeds are complete",
        split="the optimizers dealt out among them; the small models here leave much of a "
              "second core idle, so 2 pays on 2 cores (seconds to target then count a shared "
              "machine)")
    parser.add_argument("--workloads", nargs="*", default=None)
    parser.add_argument("--optimizers", nargs="*", default=OPTIMIZERS)
    args = command.parse(parser, argv)
    command.train_in_processes(
        args, "nested_research.studies.comparison",
        ["--workloads", *args.workloads] if args.workloads else [], "--optimizers",
        args.optimizers)
    workloads = study.QUICK_WORKLOADS if args.quick else study.WORKLOADS
    names = args.workloads or list(workloads)
    seeds = SEEDS[:2] if args.quick else SEEDS
    baselines = set(args.optimizers) - {"nested"}

    finals, tuning, searches, table = [], [], {}, ""
    for workload in names:
        for opt in args.optimizers:
            found, trials = tune(workload, opt, list(workloads[workload]), args.out, args.quick,
                                 train=not args.report)
            best = trials[found.best_lr]
            runs = [best if seed == 0 else study.run_job(
                study.Job(workload, opt, seed, best.job.overrides, lr=found.best_lr,
                          group="final"), args.out, train=not args.report) for seed in seeds]
            if any(o.error == study.NOT_RUN for o in list(trials.values()) + runs):
                print(f"[report] {workload} {opt}: not complete, left out", flush=True)
                continue
            searches[workload, opt] = found
            tuning += trials.values()
            finals += runs
            table = write(finals, tuning, searches, args.out, args.publish, baselines)
    print(table)
    print(study.cost_line(finals + tuning, args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

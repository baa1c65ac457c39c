"""Ablation of the nested optimizer: switch off one component at a time, on every embedded workload.

Variants (each against the full optimizer with its defaults, >= 3 seeds, at the nested optimizer's
learning rate chosen by the comparison study's search when its ``comparison.csv`` exists, else
its default rate):
memory tiers -> one tier -> none; the seed's attention -> attention scored by cosine
(``memory.attention_scoring=cosine``) -> fixed -> adaptive retrieval; depth schedule -> none;
accumulation off; compression on; per-epoch LR -> cosine -> constant.
On the language model (runs of 2,030 steps) only ``LM_VARIANTS``: the slow-memory and retrieval
questions.  The ``full`` variant is the comparison study's ``nested`` run where that study has it
(same workload, seed, rate and overrides: ``study.borrow``), so it is not trained twice.
Writes ``ablation.md``, ``ablation.csv``, ``ablation_curves.png`` and ``ablation_profile.png``
into ``--out`` (and ``--publish``) after every variant; the target is the full optimizer's (the
AlgoPerf-style scores of ``nested_research.studies.scoring``, the full optimizer as the baseline).

    python -m nested_research.studies.ablation [--out studies/ablation] [--quick] [--workloads ...]
        [--variants ...] [--jobs 2] [--report] [--publish scripts/results]

A killed study resumes where it stopped.
"""

import os
import sys

from nested_research.studies import command, plots as study_plots, runner as study

VARIANTS = {  # the language model's variants first: their runs are the longest
    "full": [],
    "one_tier": ["memory=fixed", "memory.short_term_weight=1.0", "memory.medium_term_weight=0.0",
                 "memory.long_term_weight=0.0"],
    "cosine_retrieval": ["memory.attention_scoring=cosine"],
    "no_memory": ["memory=none"],
    "fixed_retrieval": ["memory=fixed"],
    "adaptive_retrieval": ["memory=adaptive"],
    "no_depth_schedule": ["schedule_curve=none"],
    "no_accumulation": ["schedule_curve.accumulate_gradients=false"],
    "compression_r4": ["optimizer.params.use_gradient_compression=true",
                       "optimizer.params.compression_rank=4"],
    "cosine_lr": ["lr_schedule=cosine"],
    "constant_lr": ["lr_schedule=constant"],
}
SEEDS = [0, 1, 2]
#: The variants run on the language-model workload (each of its runs costs about 100 small ones).
LM_VARIANTS = ("full", "one_tier", "cosine_retrieval")


def write(outcomes, out, publish) -> str:
    rows = study.summarize(outcomes, baselines={"full"})
    table = study.write_tables(rows, out, "ablation", "variant")
    study_plots.plot_curves(outcomes, os.path.join(out, "ablation_curves.png"))
    study_plots.plot_profiles(rows, os.path.join(out, "ablation_profile.png"))
    if publish:
        study.publish(out, publish, "ablation")
    return table


def main(argv=None) -> int:
    parser = command.parser(
        __doc__, "studies/ablation", quick="tiny runs (a few steps) and 2 seeds: a smoke test",
        report="train nothing: tables from the runs that exist (complete variants only)",
        split="the variants dealt out among them")
    parser.add_argument("--workloads", nargs="*", default=None)
    parser.add_argument("--lr-from", default="studies/compare/comparison.csv",
                        help="comparison table whose nested learning rate per workload is used; "
                             "its study's nested runs are the full variant's")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = command.parse(parser, argv)
    command.train_in_processes(
        args, "nested_research.studies.ablation",
        ["--lr-from", args.lr_from] + (["--workloads", *args.workloads] if args.workloads else []),
        "--variants", args.variants)
    tuned = {}
    if not args.quick and os.path.exists(args.lr_from):
        import csv

        with open(args.lr_from) as fh:
            tuned = {r["workload"]: float(r["lr"]) for r in csv.DictReader(fh)
                     if r["label"] == "nested" and r["lr"]}
    workloads = study.QUICK_WORKLOADS if args.quick else study.WORKLOADS
    names = args.workloads or list(workloads)
    seeds = SEEDS[:2] if args.quick else SEEDS
    outcomes, table = [], ""
    for workload in names:
        for variant in args.variants:
            if workload == "lm_transformer" and variant not in LM_VARIANTS:
                continue
            lr = [f"optimizer.learning_rate={tuned[workload]:.6g}"] if workload in tuned else []
            jobs = [study.Job(workload, variant, seed,
                              workloads[workload] + ["optimizer=nested"] + lr + VARIANTS[variant],
                              lr=tuned.get(workload), group="final") for seed in seeds]
            runs = study.run_seeds(jobs, args.out, not args.report, "ablation",
                                   f"{workload} {variant}",
                                   lambda r: r["metrics"].get("test/accuracy"),
                                   twin=(os.path.dirname(args.lr_from) or ".", "nested")
                                   if variant == "full" and tuned else None)
            if runs is None:
                continue
            outcomes += runs
            table = write(outcomes, args.out, args.publish)
    print(table)
    print(study.cost_line(outcomes, args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

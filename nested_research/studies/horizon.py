"""The horizon question: does slow memory help more as runs get longer?

On the language-model workload (``experiment=lm_transformer``), the nested optimizer with its
defaults and with one tier (the short tier only: no slow memory), Adam and AdEMAMix (whose slow
EMA is the published case for long runs; its warm-ups span each run), each at its learning rate
from the comparison study's search (``--lr-from``; the conf default when the study has not tuned
it yet), train for 1/3, 1 and 3 times the comparison's run (``LENGTHS``: about 680, 2,030 and
6,090 steps), 2 seeds each.  A longer run reads a longer corpus, not the same one more often:
every length is the workload's 10 epochs, over the first ``max_bytes * k / 3`` bytes of the
standard library's sources (``k`` = 1, 3, 9), so no length overfits more than another; the
workload's per-epoch learning-rate schedule scales with the epoch.  The 3 (middle) length is the
comparison's own run, so those runs are the comparison's (``study.borrow``: nested, Adam,
AdEMAMix) and the ablation's (``one_tier``), not trained twice.

Reported per length and variant: the run length in steps, the best validation bits per byte
(mean, std, and each variant's gap to Adam at that length), in ``horizon.md``, ``horizon.csv``
and ``horizon.png``.

    python -m nested_research.studies.horizon [--out studies/horizon] [--quick] [--variants ...] [--jobs 2]
        [--lr-from studies/compare/comparison.csv] [--ablation studies/ablation]
        [--report] [--publish scripts/results]

A killed study resumes where it stopped (finished runs are reused).
"""

import csv
import math
import os
import sys

import numpy as np

from nested_research.studies import command, plots as study_plots, runner as study, scoring

WORKLOAD = "lm_transformer"
VARIANTS = {
    "nested": ["optimizer=nested"],
    "nested_one_tier": ["optimizer=nested", "memory=fixed", "memory.short_term_weight=1.0",
                        "memory.medium_term_weight=0.0", "memory.long_term_weight=0.0"],
    "adam": ["optimizer=adam"],
    "ademamix": ["optimizer=ademamix"],
}
#: Lengths k: the corpus is ``k / 3`` of the workload's (k = 3: the comparison's run).
LENGTHS = (1, 3, 9)
SEEDS = (0, 1)
#: Where each variant's middle-length runs come from, when that study has them:
#: (``--lr-from``'s study, or ``--ablation``, label there).
TWINS = {"nested": ("compare", "nested"), "adam": ("compare", "adam"),
         "ademamix": ("compare", "ademamix"), "nested_one_tier": ("ablation", "one_tier")}


def tuned_rates(path: str) -> dict:
    """``{optimizer: rate}`` of the comparison study on the LM workload, where it exists."""
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        return {r["label"]: float(r["lr"]) for r in csv.DictReader(fh)
                if r["workload"] == WORKLOAD and r["lr"]}


def rows_of(outcomes: list) -> list[dict]:
    metric, direction = study.metric_of(WORKLOAD)
    by_key: dict = {}
    for o in outcomes:
        by_key.setdefault((o.extra["length"], o.job.label), []).append(o)
    rows = []
    for (k, label), group in sorted(by_key.items()):
        length = int(np.median([o.results["steps"] for o in group if o.results] or [0]))
        values = [scoring.best_value(study.curve(o.results, metric), direction)
                  for o in group if o.results]
        mean, std = study.mean_std(values)
        rows.append({"length": k, "steps": length, "label": label, "lr": group[0].job.lr,
                     "seeds": len(group), "failed": len(group) - len(values),
                     "best_val_bpb_mean": mean, "best_val_bpb_std": std})
    adam = {r["length"]: r["best_val_bpb_mean"] for r in rows if r["label"] == "adam"}
    for r in rows:
        base = adam.get(r["length"], float("nan"))
        r["gap_to_adam"] = r["best_val_bpb_mean"] - base  # < 0: better than Adam
    return rows


def write(outcomes: list, out: str, publish: str | None) -> str:
    rows = rows_of(outcomes)
    os.makedirs(out, exist_ok=True)
    study.write_csv(rows, os.path.join(out, "horizon.csv"))
    fmt = study.number
    lines = ["| steps | corpus | variant | lr | best val bits/byte (mean ± std) | gap to Adam "
             "| seeds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['length']}/3 | {r['label']} | {fmt(r['lr'], '.2g')} | "
                     f"{fmt(r['best_val_bpb_mean'], '.4f')} ± {fmt(r['best_val_bpb_std'], '.4f')}"
                     f" | {fmt(r['gap_to_adam'], '+.4f')} | {r['seeds'] - r['failed']}"
                     f"/{r['seeds']} |")
    table = "\n".join(lines)
    with open(os.path.join(out, "horizon.md"), "w") as fh:
        fh.write(table + "\n")
    _plot(rows, os.path.join(out, "horizon.png"))
    if publish:
        study.publish(out, publish, "horizon")
    return table


def _plot(rows: list[dict], path: str) -> None:
    """Each variant's gap to Adam against the run length (each length has its own validation
    bytes, so the gaps compare, not bits per byte across lengths)."""
    plt = study_plots.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label in sorted({r["label"] for r in rows}):
        pts = [r for r in rows if r["label"] == label and math.isfinite(r["gap_to_adam"])]
        if not pts:  # (Adam's runs at its lengths not tabulated yet)
            continue
        ax.errorbar([r["steps"] for r in pts], [r["gap_to_adam"] for r in pts],
                    yerr=[r["best_val_bpb_std"] for r in pts], marker="o", capsize=3,
                    label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    if ax.lines[1:]:
        ax.set_xscale("log")
    ax.set_xlabel("run length (optimizer steps; corpus scaled with it)")
    ax.set_ylabel("best validation bits per byte - Adam's")
    ax.set_title("horizon: lm_transformer (error bars: std over seeds)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = command.parser(
        __doc__, "studies/horizon", quick="k-step runs on a small corpus: a smoke test",
        report="train nothing: tables from the runs that exist (a length and variant with all "
               "its seeds only)", split="the variants dealt out among them")
    parser.add_argument("--lr-from", default="studies/compare/comparison.csv",
                        help="comparison table whose rates are used; its study's runs are the "
                             "middle length's")
    parser.add_argument("--ablation", default="studies/ablation",
                        help="ablation study whose one_tier runs are the middle length's")
    parser.add_argument("--rates", nargs="*", default=[], metavar="OPTIMIZER=LR",
                        help="rates to use instead of --lr-from's (e.g. the search's picks "
                             "before the comparison has finished)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = command.parse(parser, argv)
    workloads = study.QUICK_WORKLOADS if args.quick else study.WORKLOADS
    rates = {} if args.quick else tuned_rates(args.lr_from)
    for item in args.rates:
        name, _, value = item.partition("=")
        try:
            rates[name] = float(value)
        except ValueError:
            parser.error(f"--rates {item!r} must be OPTIMIZER=LR with a number LR")
    command.train_in_processes(
        args, "nested_research.studies.horizon",
        ["--lr-from", args.lr_from, "--ablation", args.ablation] +
        (["--rates", *args.rates] if args.rates else []), "--variants", args.variants)
    base = list(workloads[WORKLOAD])
    corpus = int(study.compose(base).data.builder_kwargs.config.max_bytes)
    dirs = {"compare": os.path.dirname(args.lr_from) or ".", "ablation": args.ablation}
    outcomes, table = [], ""
    for k in LENGTHS:
        for label in args.variants:
            overrides = VARIANTS[label]
            optimizer = overrides[0].split("=", 1)[1]
            lr = rates.get(label, rates.get(optimizer)) if label != "nested_one_tier" \
                else rates.get("nested")
            lr = lr if lr is not None else study.default_lr(optimizer)
            sized = [] if k == 3 else [f"data.builder_kwargs.config.max_bytes={corpus * k // 3}"]
            if args.quick:  # k steps
                sized.append(f"trainer.max_steps={k}")
            jobs = [study.Job(WORKLOAD, label, seed, base + overrides + [
                f"optimizer.learning_rate={lr:.6g}"] + sized, lr=lr, group=f"horizon{k}")
                for seed in SEEDS]
            where, twin_label = TWINS[label]
            twin = (dirs[where], twin_label) if k == 3 and not args.quick else None
            runs = study.run_seeds(jobs, args.out, not args.report, "horizon",
                                   f"{k}/3 x {label}", lambda r: r["metrics"], twin=twin)
            if runs is None:
                continue
            for outcome in runs:
                outcome.extra["length"] = k
            outcomes += runs
            table = write(outcomes, args.out, args.publish)
    print(table)
    print(study.cost_line(outcomes, args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

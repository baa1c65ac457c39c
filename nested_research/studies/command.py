"""The command line the studies share (``comparison``, ``ablation``, ``horizon``): where a study
writes, a smoke-test size, training in several processes, tabulating only, publishing."""

from __future__ import annotations

import argparse

from nested_research.studies import ray_pool, runner


def parser(doc: str, out: str, quick: str, report: str, split: str) -> argparse.ArgumentParser:
    """A study's parser with the shared flags; ``quick``, ``report`` and ``split`` say what
    ``--quick``, ``--report`` and ``--jobs`` mean for this study."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", default=out)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--jobs", type=int, default=1,
                   help=f"train in this many processes at once ({split}), then tabulate")
    p.add_argument("--executor", choices=ray_pool.EXECUTORS, default="local",
                   help="where --jobs trains: local processes, or Ray (RAY_ADDRESS, else a local "
                        "instance; with ray, even --jobs 1 trains in a Ray task)")
    p.add_argument("--report", action="store_true", help=report)
    p.add_argument("--publish", default=None,
                   help="also copy the tables and figures into this directory")
    return p


def parse(p: argparse.ArgumentParser, argv):
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs={args.jobs} must be an integer >= 1")
    if args.executor == "ray" and not args.report:
        ray_pool.require()
    return args


def train_in_processes(args, module: str, common: list, flag: str, labels: list) -> None:
    """With ``--jobs`` > 1 or ``--executor ray`` (and not ``--report``): ``module`` once per label,
    ``--jobs`` at a time, each with ``--out``, ``--quick`` and ``common``; then the study only
    tabulates."""
    executor = getattr(args, "executor", "local")
    if args.report or (args.jobs <= 1 and executor == "local"):
        return
    common = ["--out", args.out] + (["--quick"] if args.quick else []) + list(common)
    runner.train_in_processes(module, common, flag, labels, args.jobs, executor)
    args.report = True  # then tabulate what they trained

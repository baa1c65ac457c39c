"""The whole study in one command: the comparison, the ablation and the horizon, over one pool of
training processes.

The work is a list of tasks, each one script for one label (``compare_optimizers.py --optimizers
adam``, ``ablation.py --variants one_tier``, ``horizon.py --variants nested``), run ``--jobs`` at
a time (``processes.run_pool``); a task starts as soon as what it needs has finished, so
no core waits for a whole step to end:

- the ablation needs the comparison's ``nested`` (its rates, and its runs are the ``full``
  variant's);
- each horizon variant needs the comparison of the optimizer whose rate it takes, and the study
  whose runs are its middle length (``horizon.TWINS``).

The rates they take are written by this script alone (``<root>/compare/rates.csv``, from the
finished searches), not read from tables that training processes rewrite.  Long tasks are
queued first.  At the end each script tabulates (``--report``) and publishes, and the study's cost
is printed: its runs and their CPU time (the three studies' ``cost.json`` files), this
invocation's wall time, and the wall time of every invocation so far (``<root>/invocations.json``,
kept every 30 s, so an invocation that was killed counts to its last half minute).  Every task
resumes, so a killed study resumes: run the same command.

``--executor ray`` runs the same tasks, in the same order, as Ray tasks (``studies.ray_pool``: the
cluster at ``RAY_ADDRESS``, else a local instance), ``--jobs`` at a time; the rates are written
here, the tables and the cost line too.

    python -m nested_research.studies.run_all [--root studies] [--jobs 2] [--executor local|ray]
                                              [--publish scripts/results]
"""

import argparse
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import threading
import time

from nested_research.core.files import replace_file
from nested_research.studies import ablation, horizon, processes, ray_pool, runner as study
from nested_research.studies import comparison as compare_optimizers
from nested_research.studies.processes import Task

#: The command of each study (``python -m <module>``), by the short name a task's argv starts with.
MODULES = {"compare_optimizers.py": "nested_research.studies.comparison",
           "ablation.py": "nested_research.studies.ablation",
           "horizon.py": "nested_research.studies.horizon"}

#: The comparison's optimizers whose results others need, queued first.
FIRST = ("nested", "adam", "ademamix")


def tasks(root: str) -> list[Task]:
    """The study's tasks, long ones first.  Each ``argv`` is a study's short name (``MODULES``)
    and its arguments, which ``launch`` runs with this Python."""
    compare, ablation_dir, rates = _dirs(root)
    first = [o for o in FIRST if o in compare_optimizers.OPTIMIZERS]
    rest = [o for o in compare_optimizers.OPTIMIZERS if o not in first]

    def comparison(opt):
        return Task(f"compare {opt}", ["compare_optimizers.py", "--out", compare,
                                       "--optimizers", opt])

    def ablate(variant):
        return Task(f"ablation {variant}", ["ablation.py", "--out", ablation_dir, "--lr-from",
                                            rates, "--variants", variant],
                    needs=("compare nested",))

    def horizon_task(variant):
        optimizer = horizon.VARIANTS[variant][0].split("=", 1)[1]
        where, label = horizon.TWINS[variant]
        needs = {f"compare {optimizer}", f"{where} {label}"}
        return Task(f"horizon {variant}", ["horizon.py", "--out", os.path.join(root, "horizon"),
                                           "--lr-from", rates, "--ablation", ablation_dir,
                                           "--variants", variant], needs=tuple(sorted(needs)))

    long_ablation = [v for v in ablation.VARIANTS if v in ablation.LM_VARIANTS]
    return ([comparison(o) for o in first] + [ablate(v) for v in long_ablation] +
            [horizon_task(v) for v in horizon.VARIANTS] + [comparison(o) for o in rest] +
            [ablate(v) for v in ablation.VARIANTS if v not in long_ablation])


def _dirs(root):
    compare = os.path.join(root, "compare")
    return compare, os.path.join(root, "ablation"), os.path.join(compare, "rates.csv")


def write_rates(root: str, optimizers: list[str]) -> None:
    """``rates.csv`` (workload, label, lr): each finished search's chosen rate."""
    compare, _, path = _dirs(root)
    rows = []
    for opt in optimizers:
        for workload, overrides in study.WORKLOADS.items():
            with contextlib.redirect_stdout(io.StringIO()):  # (its per-trial lines)
                found, trials = compare_optimizers.tune(workload, opt, list(overrides), compare,
                                                        quick=False, train=False)
            if all(o.error != study.NOT_RUN for o in trials.values()):
                rows.append({"workload": workload, "label": opt, "lr": found.best_lr})
    os.makedirs(compare, exist_ok=True)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=["workload", "label", "lr"])
    writer.writeheader()
    writer.writerows(rows)
    replace_file(path, table.getvalue())


def launch(args: list, jobs: int) -> subprocess.Popen:
    """``python -m <MODULES[args[0]]> *args[1:]``, sized to one of ``jobs`` processes."""
    return subprocess.Popen([sys.executable, "-m", MODULES[args[0]], *args[1:]],
                            env=processes.worker_env(jobs))


def run_pool(todo: list[Task], root: str, jobs: int, executor: str = "local") -> list[str]:
    """Run ``todo`` (module docstring) on ``executor`` (``local`` or ``ray``); the names of the
    tasks that failed or could not start because one they need failed."""
    rated = None

    def rates_for(task, finished):
        nonlocal rated
        compared = sorted(n.split(" ", 1)[1] for n in finished if n.startswith("compare "))
        if task.needs and compared != rated:  # (written again only when it changed)
            write_rates(root, compared)
            rated = compared

    if executor == "ray":
        return ray_pool.run_pool(todo, jobs, rates_for, lambda task: [
            ray_pool.PYTHON, "-m", MODULES[task.argv[0]], *task.argv[1:]])

    def start(task, finished):
        rates_for(task, finished)
        return launch(task.argv, jobs)

    return processes.run_pool(todo, jobs, start)


def cpu_hours(root: str) -> tuple[int, float]:
    """(runs, CPU hours) over every trained run under ``root``'s studies."""
    costs = []
    for name in ("compare", "ablation", "horizon"):
        base = os.path.join(root, name, "runs")
        for job in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            costs.append(study.cpu_seconds(os.path.join(base, job)))
    costs = [c for c in costs if c is not None]
    return len(costs), sum(costs) / 3600


#: Each invocation's wall time so far (seconds, by start time), under ``--root``.
INVOCATIONS = "invocations.json"


def record_wall(root: str, started: float) -> tuple[int, float]:
    """Write this invocation's wall time so far into ``<root>/invocations.json`` (atomically);
    return the number of invocations recorded there and their wall time, this one included."""
    path = os.path.join(root, INVOCATIONS)
    try:
        with open(path) as fh:
            walls = json.load(fh)
    except (OSError, ValueError):
        walls = {}
    walls[time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))] = time.time() - started
    os.makedirs(root, exist_ok=True)
    replace_file(path, json.dumps(walls, indent=1))
    return len(walls), sum(walls.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="studies",
                        help="the studies' parent directory (compare/, ablation/, horizon/)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--publish", default="scripts/results")
    parser.add_argument("--executor", choices=ray_pool.EXECUTORS, default="local",
                        help="where the tasks run: local processes, or Ray (RAY_ADDRESS, else a "
                             "local instance)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be an integer >= 1")
    if args.executor == "ray":
        ray_pool.require()  # (one line if Ray is missing, before anything starts)
    start, stop = time.time(), threading.Event()

    def heartbeat():  # a killed invocation's time counts too, to the last half minute
        while not stop.wait(30):
            record_wall(args.root, start)

    beat = threading.Thread(target=heartbeat, name="study-wall", daemon=True)
    beat.start()
    failed = run_pool(tasks(args.root), args.root, args.jobs, args.executor)
    compare, ablation_dir, rates = _dirs(args.root)
    reports = [["compare_optimizers.py", "--out", compare],
               ["ablation.py", "--out", ablation_dir, "--lr-from", rates],
               ["horizon.py", "--out", os.path.join(args.root, "horizon"), "--lr-from", rates,
                "--ablation", ablation_dir]]
    for report in reports:
        launch(report + ["--report", "--publish", args.publish], 1).wait()
    stop.set()
    beat.join()  # its last write lands before the final one
    count, total = record_wall(args.root, start)
    runs, hours = cpu_hours(args.root)
    print(f"[study cost] {runs} runs trained, {hours:.2f} CPU hours; this invocation "
          f"{(time.time() - start) / 3600:.2f} hours of wall time, all {count} invocations "
          f"{total / 3600:.2f} hours", flush=True)
    if failed:
        print(f"[study] failed: {', '.join(failed)}; run again to resume", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

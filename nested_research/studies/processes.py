"""Training processes: a pool of commands run ``jobs`` at a time, on a machine's share of cores.

The studies train in separate processes (``nested_research/studies/run_all.py``, and each study script's
``--jobs``), and the test suite runs in pytest-xdist workers.  Both size TensorFlow's thread
pools with :func:`worker_env`; the studies run their commands with :func:`run_pool`.  Nothing
here imports TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from nested_research.core.checks import check_int


@dataclass
class Task:
    """One command of a pool: ``argv``, started once every task named in ``needs`` finished.
    ``num_cpus`` and ``num_gpus``: what it needs of a machine (the Ray executor,
    ``studies.ray_pool``, reserves them and sizes its thread pools to ``num_cpus``)."""

    name: str
    argv: list
    needs: tuple = ()
    num_cpus: int = 1
    num_gpus: float = 0


def worker_env(jobs: int, env: dict | None = None, threads: int | None = None) -> dict:
    """The environment of one of ``jobs`` training processes on this machine: TensorFlow's
    thread pools sized to its share of the cores (``TF_NUM_INTRAOP_THREADS`` = cores // jobs,
    ``TF_NUM_INTEROP_THREADS`` = 1), unless the caller's environment sets them.  Two processes
    that each start a pool as large as the machine take turns on its cores: on 2 cores, two
    language-model runs of 800 steps took 97 s side by side with the default pools and 51 s
    with one thread each, with the same results.  ``threads``, if given, is the share instead
    (a Ray task's CPUs)."""
    jobs = check_int("jobs", jobs, low=1)
    if threads is None:
        threads = (os.cpu_count() or 1) // jobs
    env = dict(os.environ if env is None else env)
    env.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, int(threads))))
    env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    return env


Start = Callable[[Task, set], subprocess.Popen]


def check_tasks(todo: list[Task]) -> None:
    """``ValueError`` unless the names are distinct and every need names a task that can run
    (no circle), before anything starts."""
    names = [t.name for t in todo]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"tasks={twice!r} must be named once each")
    for t in todo:
        check_int(f"{t.name}: num_cpus", t.num_cpus, low=1)
        if not t.num_gpus >= 0:
            raise ValueError(f"{t.name}: num_gpus={t.num_gpus!r} must be >= 0")
    unknown = sorted({n for t in todo for n in t.needs} - set(names))
    if unknown:
        raise ValueError(f"needs={unknown!r} must name tasks of the pool: {names}")
    ready, left = set(), list(todo)
    while left:
        now = [t for t in left if set(t.needs) <= ready]
        if not now:
            raise ValueError(f"needs of {sorted(t.name for t in left)!r} must not form a circle")
        ready |= {t.name for t in now}
        left = [t for t in left if t not in now]


class Schedule:
    """The pool's bookkeeping, the same for every executor (this module's processes, Ray's
    tasks): which task may start now, and what a finished one means for the rest."""

    def __init__(self, todo: list[Task], jobs: int):
        self.pending, self.jobs = list(todo), jobs
        self.done: set = set()
        self.failed: list = []

    def ready(self, running: int) -> list[Task]:
        """The tasks to start now, in list order, while fewer than ``jobs`` run and all they need
        has finished; a task whose need failed is dropped, not started."""
        out = []
        for task in list(self.pending):
            blocked = [n for n in task.needs if n in self.failed]
            if blocked:
                self.pending.remove(task)
                self.failed.append(task.name)
                print(f"[pool] {task.name}: not started ({', '.join(blocked)} failed)",
                      flush=True)
            elif running + len(out) < self.jobs and all(n in self.done for n in task.needs):
                print(f"[pool] start {task.name}", flush=True)
                self.pending.remove(task)
                out.append(task)
        return out

    def finished(self, name: str, code: int) -> None:
        (self.done.add(name) if code == 0 else self.failed.append(name))
        print(f"[pool] {name}: exit code {code}", flush=True)

    def lost(self, name: str, why: str) -> None:
        """A task that ended without an exit code (its executor lost it)."""
        self.failed.append(name)
        print(f"[pool] {name}: {why}", flush=True)


def run_pool(todo: list[Task], jobs: int, start: Start | None = None) -> list[str]:
    """Run ``todo``, at most ``jobs`` processes at a time, to the end.

    Tasks start in list order as soon as a slot is free and the tasks they need have finished
    (exit code 0), so a long task does not hold up a share of short ones; a task whose need
    failed is not started.  ``start(task, finished)`` launches one (``finished``: the names
    done so far); by default ``task.argv`` with :func:`worker_env`.  Returns the names of the
    tasks that failed or were not started, in that order; prints a line per event.  Names,
    needs and ``jobs`` are checked first (``check_tasks``); if the pool itself is interrupted
    (``start`` raises, Ctrl-C), the processes it started are stopped."""
    jobs = check_int("jobs", jobs, low=1)
    check_tasks(todo)
    if start is None:
        def start(task, finished):
            return subprocess.Popen(task.argv, env=worker_env(jobs))
    schedule, running = Schedule(todo, jobs), {}
    try:
        while schedule.pending or running:
            for task in schedule.ready(len(running)):
                running[task.name] = start(task, set(schedule.done))
            time.sleep(0.5)
            for name, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    schedule.finished(name, proc.returncode)
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    return schedule.failed

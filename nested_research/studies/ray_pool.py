"""The study's pool on Ray: the same tasks as ``processes.run_pool``, each a Ray task that runs its
command line as a subprocess on whichever node Ray places it.

``run_pool`` keeps the local pool's rules: a task is submitted once every task it needs finished
(exit code 0), at most ``jobs`` at a time, in list order; a task whose need failed is not
started; it prints the same ``[pool]`` lines and returns the same names.  Each task reserves its
``num_cpus`` and ``num_gpus`` on the cluster, and its TensorFlow thread pools are sized to its
CPUs (``processes.worker_env``).  The commands are unchanged and resume themselves, so a study
killed on Ray resumes on Ray or on the local pool alike.

Where it runs: the cluster at ``RAY_ADDRESS`` if set (``ray start --head`` on one node, ``ray start
--address=<head>:6379`` on the others), else a local instance started here on 127.0.0.1, with
``max(cores, jobs)`` CPUs, no dashboard and no usage reporting, stopped at the end.  On a cluster
every node runs the command in this process's working directory with its own Python (``PYTHON``
in an argv), so the package and the study's directory must be at the same paths on every node
(a shared file system).

Ray is imported only here and only when used: the core install and the local pool need no Ray
(``pip install -e ".[ray]"``).
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from nested_research.core.checks import check_int
from nested_research.studies import processes
from nested_research.studies.processes import Task

#: The message when Ray is asked for but not installed.
MISSING = '--executor=ray needs Ray: pip install -e ".[ray]"'

#: In an argv: the Python of the node that runs it (``sys.executable`` there).
PYTHON = "<python>"

#: The executors a pool can run on.
EXECUTORS = ("local", "ray")


def require():
    """The ``ray`` module, or ``SystemExit`` with one line (``MISSING``) if it is not installed."""
    try:
        import ray
    except ImportError:
        raise SystemExit(MISSING) from None
    return ray


def _guard_pyarrow() -> bool:
    """Treat a pyarrow that is installed but cannot be imported (a wheel built for another NumPy)
    as absent while Ray runs: Ray imports it when it serializes anything and only tolerates its
    absence.  True if it did (``_unguard_pyarrow`` undoes it when the pool is done)."""
    if "pyarrow" in sys.modules:
        return False
    try:
        import pyarrow  # noqa: F401
    except ModuleNotFoundError:
        pass
    except ImportError:
        sys.modules["pyarrow"] = None  # later imports: ModuleNotFoundError
        return True
    return False


def _unguard_pyarrow() -> None:
    """The process's imports as they were before ``_guard_pyarrow`` (other code, TFDS's lazy
    imports for one, tells an absent module from a broken one)."""
    if "pyarrow" in sys.modules and sys.modules["pyarrow"] is None:
        del sys.modules["pyarrow"]


def start_ray(jobs: int, todo: list[Task] = ()) -> bool:
    """Connect to Ray unless already connected; True if this call connected (and so should
    disconnect).  ``RAY_ADDRESS`` set: that cluster.  Else a local instance (see the module
    docstring); ``ValueError`` naming a task that asks for more CPUs or GPUs than it has."""
    ray = require()
    if ray.is_initialized():
        return False
    _guard_pyarrow()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=True,
                 runtime_env={"worker_process_setup_hook": _guard_pyarrow})
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        return True
    cpus = max(os.cpu_count() or 1, jobs)
    gpus = _local_gpus()
    for task in todo:
        if task.num_cpus > cpus or task.num_gpus > gpus:
            raise ValueError(f"{task.name}: num_cpus={task.num_cpus}, num_gpus={task.num_gpus} "
                             f"must fit this machine ({cpus} CPUs, {gpus} GPUs)")
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, _node_ip_address="127.0.0.1",
             **quiet)
    return True


def _local_gpus() -> int:
    """The GPUs this machine shows (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``), 0 if none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _run_command(argv: list, cwd: str, num_cpus: int) -> int:
    """On a Ray worker: ``argv`` as a subprocess in ``cwd``, its thread pools sized to
    ``num_cpus``; its exit code (127 if it could not start).  Cancelled (Ray raises
    ``KeyboardInterrupt`` here), it stops the subprocess."""
    import subprocess

    argv = [sys.executable if a == PYTHON else a for a in argv]
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=processes.worker_env(1, threads=num_cpus))
    except OSError as err:
        print(f"[pool] could not start {argv[0]} in {cwd}: {err}", file=sys.stderr, flush=True)
        return 127
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


Before = Callable[[Task, set], None]


def run_pool(todo: list[Task], jobs: int, before: Before | None = None,
             command: Callable[[Task], list] | None = None) -> list[str]:
    """``processes.run_pool`` on Ray (module docstring).  ``before(task, finished)`` runs here just
    before a task is submitted (``finished``: the names done so far); ``command(task)`` is the
    argv a worker runs (default ``task.argv``).  Returns the names of the tasks that failed or
    were not started, in that order.  Interrupted (``before`` raises, Ctrl-C), it cancels the
    tasks it submitted, which stops their processes."""
    jobs = check_int("jobs", jobs, low=1)
    processes.check_tasks(todo)
    ray = require()
    started_ray = start_ray(jobs, todo)
    remote = ray.remote(max_retries=1)(_run_command)  # (retried only if its node is lost)
    cwd = os.getcwd()
    schedule, running = processes.Schedule(todo, jobs), {}
    try:
        while schedule.pending or running:
            for task in schedule.ready(len(running)):
                if before is not None:
                    before(task, set(schedule.done))
                argv = list(task.argv if command is None else command(task))
                ref = remote.options(num_cpus=task.num_cpus, num_gpus=task.num_gpus,
                                     name=task.name).remote(argv, cwd, task.num_cpus)
                running[ref] = task
            if not running:
                continue
            finished, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in finished:
                task = running.pop(ref)
                try:
                    code = ray.get(ref)
                except ray.exceptions.RayError as err:
                    schedule.lost(task.name, f"failed on Ray ({type(err).__name__})")
                    continue
                schedule.finished(task.name, code)
    finally:
        for ref in running:
            ray.cancel(ref)
        if running:
            ray.wait(list(running), num_returns=len(running), timeout=60)
        if started_ray:
            stop_ray()
    return schedule.failed


def stop_ray() -> None:
    """Disconnect from Ray (and stop the local instance ``start_ray`` started); the process's
    imports as they were."""
    require().shutdown()
    _unguard_pyarrow()

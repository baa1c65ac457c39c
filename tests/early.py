"""Slow work that runs in other processes, started early in a thread; its test waits for it.

A test whose time goes to child processes (training runs on the command line, a sweep of
them, a run on two logical devices) leaves the test process idle, and the test process keeps
about one of two cores busy.  Started when its module starts (``selected``: only when a test
that reads it runs), such work goes on in a thread, one job after the other, while the
module's in-process tests run; the test that reads a job calls ``result(name)``.  What runs,
and what the test asserts, is what the test ran itself before.  The thread and its child
processes run at a lower priority (``NICE``): the tests' own process keeps its core.

A job takes its environment and working directory from the moment it is queued (give them
to ``run``/``popen`` explicitly): tests running meanwhile may change both (``monkeypatch``).
Work for a module with little else to run starts with the session instead: the module's
``session_jobs`` (conftest's ``early_session``).  ``close()`` (the fixture's teardown) stops
what a stopped session (``-x``, Ctrl-C) left unread: queued jobs do not start, running child
processes started with ``popen``/``run`` are killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

_THREAD = threading.local()  # .early: the Early whose job runs in this thread


def popen(args, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen``; in an early job, killed by its ``Early.close()`` if still running."""
    proc = subprocess.Popen(args, **kwargs)
    early = getattr(_THREAD, "early", None)
    if early is not None:
        early._children.add(proc)
    return proc


def run(args, *, timeout=None, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True, ...)`` through ``popen``."""
    proc = popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


#: Niceness of the early jobs' thread and of the processes it starts (Linux): they take what
#: CPU the tests' own process leaves.
NICE = 10


def _second_in_line() -> None:
    if sys.platform.startswith("linux"):  # per thread there; children inherit it
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except OSError:
            pass


class Early:
    """``{name: fn}``: each ``fn()`` in turn, in a daemon thread, from now; ``lazy``: no
    thread, a job runs in the test that first reads it."""

    def __init__(self, jobs: dict, lazy: bool = False):
        self._jobs = dict(jobs)
        self._done = {name: threading.Event() for name in self._jobs}
        self._results: dict = {}
        self._children: set = set()
        self._closed = False
        self._lazy = lazy
        if not lazy:
            threading.Thread(target=self._run, daemon=True, name="early-jobs").start()

    def _run(self):
        _THREAD.early = self
        _second_in_line()
        for name in self._jobs:
            self._run_one(name)

    def _run_one(self, name):
        if self._closed:
            self._results[name] = (None, RuntimeError(f"early job {name!r} not run: closed"))
        else:
            try:
                self._results[name] = (self._jobs[name](), None)
            except BaseException as err:  # raised in the test that reads it
                self._results[name] = (None, err)
        self._done[name].set()

    def result(self, name: str, timeout: float | None = None):
        """What job ``name`` returned (its exception is raised here)."""
        if name not in self._done:
            raise KeyError(f"no early job {name!r}: its test was not selected when the work "
                           f"started ({sorted(self._done)} were)")
        if self._lazy and not self._done[name].is_set():
            _THREAD.early = self
            try:
                self._run_one(name)
            finally:
                _THREAD.early = None
        if not self._done[name].wait(timeout):
            raise TimeoutError(f"early job {name!r} still running after {timeout} s")
        value, error = self._results[name]
        if error is not None:
            raise error
        return value

    def close(self) -> None:
        """No further job starts; child processes still running (``popen``) are killed."""
        self._closed = True
        for proc in list(self._children):
            if proc.poll() is None:
                proc.kill()


def selected(request, name: str, module=None) -> bool:
    """Whether the test function ``name`` of ``module`` (default: ``request``'s) runs in this
    session (``-k``, ``-m`` and node ids applied)."""
    module = module or request.module
    return any(getattr(item, "module", None) is module
               and getattr(item, "originalname", item.name) == name
               for item in request.session.items)


def session_jobs(request, tmp_path_factory, data_dir) -> dict:
    """``{name: fn}`` of every selected test module's ``session_jobs(request,
    tmp_path_factory, data_dir)``: work to start with the session's first test (conftest's
    ``early_session``; ``data_dir``: the session's), for tests that have few in-process tests
    of their own module to run beside."""
    jobs = {}
    for module in dict.fromkeys(getattr(item, "module", None) for item in request.session.items):
        make = getattr(module, "session_jobs", None)
        if make is not None:
            jobs.update(make(request, tmp_path_factory, data_dir))
    return jobs

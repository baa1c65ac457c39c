"""The study's pool on Ray (``studies.ray_pool``): a small study graph on a local Ray instance,
in the local pool's order and with its rules, and ``run_all --executor ray`` over it.  Skipped
where Ray is not installed (it comes with the ``ray`` extra); the missing-Ray message is
checked everywhere."""

import os
import sys

import pytest

from nested_research.studies import processes, ray_pool
from nested_research.studies import run_all

#: The fake study command: records its start, end, thread pool and argv under ``RAY_TEST_LOG``
#: (named by its last argument), and fails with 5 when that is ``bad``.
CHILD = """\
import os, sys, time
label = sys.argv[-1]
start = time.time()
time.sleep(0.3)
with open(os.path.join(os.environ["RAY_TEST_LOG"], label), "w") as fh:
    fh.write(f"{start} {time.time()} {os.environ['TF_NUM_INTRAOP_THREADS']} {os.getcwd()}")
sys.exit(5 if label == "bad" else 0)
"""


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray instance (``ray_pool.start_ray``), its workers seeing the fake study module
    (``ray_fake_study``) and the log directory; shut down after the module's tests."""
    ray = pytest.importorskip("ray")
    base = tmp_path_factory.mktemp("ray")
    (base / "ray_fake_study.py").write_text(CHILD)
    log = base / "log"
    log.mkdir()
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_TEST_LOG", "RAY_ADDRESS",
                                            "TF_NUM_INTRAOP_THREADS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(base)] + [p for p in [saved["PYTHONPATH"]] if p])
    os.environ["RAY_TEST_LOG"] = str(log)
    for key in ("RAY_ADDRESS", "TF_NUM_INTRAOP_THREADS"):  # a local instance; the task's share
        os.environ.pop(key, None)
    assert ray_pool.start_ray(2)
    try:
        yield log
    finally:
        ray_pool.stop_ray()
        assert "pyarrow" not in sys.modules or sys.modules["pyarrow"] is not None
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _records(log):
    out = {}
    for path in log.iterdir():
        start, end, threads, cwd = path.read_text().split(" ", 3)
        out[path.name] = (float(start), float(end), threads, cwd)
        path.unlink()
    return out


def test_ray_pool_keeps_the_order_and_skips_what_needs_a_failed_task(local_ray, capsys):
    argv = [ray_pool.PYTHON, "-m", "ray_fake_study"]
    todo = [processes.Task("a", [*argv, "a"]), processes.Task("bad", [*argv, "bad"]),
            processes.Task("c", [*argv, "c"], needs=("a",), num_cpus=2),
            processes.Task("d", [*argv, "d"], needs=("bad",)),
            processes.Task("e", [*argv, "e"], needs=("c", "d")),
            processes.Task("f", [*argv, "f"], needs=("c",))]
    seen = []
    failed = ray_pool.run_pool(todo, 2, lambda task, done: seen.append((task.name, done)))
    assert failed == ["bad", "d", "e"]
    records = _records(local_ray)
    assert sorted(records) == ["a", "bad", "c", "f"]          # d and e never started
    assert records["c"][0] >= records["a"][1]                # after what it needs
    assert records["f"][0] >= records["c"][1]
    spans = [(r[0], r[1]) for r in records.values()]
    for start, _ in spans:                                    # at most 2 at a time
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    assert records["c"][2] == "2" and records["a"][2] == "1"  # threads follow the task's CPUs
    assert {r[3] for r in records.values()} == {os.getcwd()}
    assert [name for name, _ in seen] == ["a", "bad", "c", "f"]
    assert "a" in dict(seen)["c"]                            # called once its needs finished
    out = capsys.readouterr().out
    for line in ["[pool] start a", "[pool] start bad", "[pool] bad: exit code 5",
                 "[pool] a: exit code 0", "[pool] d: not started (bad failed)",
                 "[pool] e: not started (d failed)", "[pool] f: exit code 0"]:
        assert line in out
    assert out.index("[pool] a: exit code 0") < out.index("[pool] start c")


def test_run_all_on_ray_writes_the_rates_runs_the_tasks_and_prints_its_cost(
        local_ray, tmp_path, monkeypatch, capsys):
    """``run_all --executor ray`` with a small task graph of fake commands (``MODULES`` all name
    the fake study): the same rules as its local pool, the rates written before a dependent
    starts, the reports and the cost line after."""
    todo = [run_all.Task("compare nested", ["compare_optimizers.py", "--optimizers", "nested"]),
            run_all.Task("compare bad", ["compare_optimizers.py", "--optimizers", "bad"]),
            run_all.Task("ablation full", ["ablation.py", "--variants", "full"],
                         needs=("compare nested",)),
            run_all.Task("horizon adam", ["horizon.py", "--variants", "adam"],
                         needs=("compare bad",))]
    rates, reports = [], []

    class Done:
        def wait(self):
            return 0

    monkeypatch.setattr(run_all, "tasks", lambda root: todo)
    monkeypatch.setattr(run_all, "MODULES", dict.fromkeys(run_all.MODULES, "ray_fake_study"))
    monkeypatch.setattr(run_all, "write_rates", lambda root, opts: rates.append(
        (opts, sorted(os.listdir(local_ray)))))
    monkeypatch.setattr(run_all, "launch", lambda args, jobs: reports.append(args) or Done())
    assert run_all.main(["--root", str(tmp_path), "--executor", "ray", "--jobs", "2"]) == 1
    records = _records(local_ray)
    assert sorted(records) == ["bad", "full", "nested"]
    assert records["full"][0] >= records["nested"][1]
    assert [opts for opts, _ in rates] == [["nested"]]          # before the ablation started
    assert "nested" in rates[0][1] and "full" not in rates[0][1]
    assert [r[0] for r in reports] == ["compare_optimizers.py", "ablation.py", "horizon.py"]
    out = capsys.readouterr().out
    assert "[pool] horizon adam: not started (compare bad failed)" in out
    assert "[study cost] 0 runs trained, 0.00 CPU hours" in out
    assert "[study] failed: compare bad, horizon adam; run again to resume" in out


def test_study_commands_jobs_train_on_ray(local_ray):
    """A study command's ``--jobs`` with ``--executor ray``: a Ray task per label."""
    from nested_research.studies import runner

    with pytest.raises(SystemExit, match="training processes failed: bad"):
        runner.train_in_processes("ray_fake_study", [], "--variants", ["a", "bad", "a"], 2, "ray")
    assert sorted(_records(local_ray)) == ["a", "bad"]


def test_ray_executor_without_ray_stops_with_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit) as stop:
        run_all.main(["--executor", "ray"])
    assert str(stop.value) == '--executor=ray needs Ray: pip install -e ".[ray]"'

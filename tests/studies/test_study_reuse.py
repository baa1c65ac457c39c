"""The study's plumbing: training processes sized to their share of the cores, a process per
label, and runs shared between studies (the ablation's ``full`` and the horizon's middle length
are the comparison's runs: ``study.borrow``), checked without training anything."""

import csv
import importlib
import json
import os
import pathlib
import re

import pytest

from nested_research.core import files

from nested_research.studies import processes, runner as study

from repo import ROOT


#: The study commands, by the script name of scripts/ that runs them.
STUDY_MODULES = {"compare_optimizers": "comparison", "ablation": "ablation",
                 "horizon": "horizon", "run_study": "run_all"}


def _script(name):
    module = importlib.import_module(f"nested_research.studies.{STUDY_MODULES[name]}")
    return module


def test_worker_env_sizes_the_pools_and_keeps_the_users(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    env = processes.worker_env(2, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "1"}
    assert processes.worker_env(16, {})["TF_NUM_INTRAOP_THREADS"] == "1"
    mine = {"TF_NUM_INTRAOP_THREADS": "3", "TF_NUM_INTEROP_THREADS": "2"}
    assert processes.worker_env(2, mine) == mine


def test_train_in_processes_runs_a_process_per_label_at_most_jobs_at_once(tmp_path, monkeypatch):
    log = tmp_path / "log"
    log.mkdir()
    script = tmp_path / "study_child.py"  # run as a module, as the studies are
    script.write_text(
        "import os, sys, time\n"
        "label = sys.argv[-1]\n"
        "start = time.time()\n"
        "time.sleep(0.4)\n"
        f"open(os.path.join({str(log)!r}, label), 'w').write("
        "f\"{start} {time.time()} {os.environ['TF_NUM_INTRAOP_THREADS']} {sys.argv[1:]}\")\n"
        "sys.exit(3 if label == 'bad' else 0)\n")
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    labels = ["a", "b", "c", "d", "e"]
    study.train_in_processes("study_child", ["--out", "x"], "--variants", labels, 2)
    records = {p.name: p.read_text().split(" ", 3) for p in log.iterdir()}
    assert sorted(records) == labels
    spans = [(float(r[0]), float(r[1])) for r in records.values()]
    for start, _ in spans:  # never more than 2 running at once
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    assert {r[2] for r in records.values()} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert records["c"][3] == str(["--out", "x", "--variants", "c"])
    with pytest.raises(SystemExit, match="training processes failed: bad"):
        study.train_in_processes("study_child", [], "--variants", ["a", "bad"], 2)
    for path in log.iterdir():
        path.unlink()
    study.train_in_processes("study_child", [], "--variants", ["a", "a", "b"], 2)  # once each
    assert sorted(p.name for p in log.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("todo,jobs,message", [
    ([processes.Task("a", []), processes.Task("a", [])], 1, "tasks=['a'] must be named once"),
    ([processes.Task("a", [], needs=("b",))], 1, "needs=['b'] must name tasks of the pool"),
    ([processes.Task("a", [], needs=("b",)), processes.Task("b", [], needs=("a",))], 1,
     "must not form a circle"),
    ([processes.Task("a", [])], 0, "jobs=0 must be an integer >= 1"),
])
def test_run_pool_refuses_bad_tasks_before_starting_any(todo, jobs, message):
    started = []
    with pytest.raises(ValueError, match=re.escape(message)):
        processes.run_pool(todo, jobs, lambda task, done: started.append(task))
    assert not started


def test_run_pool_names_only_the_failed_needs_and_stops_its_processes(monkeypatch, capsys):
    monkeypatch.setattr(processes.time, "sleep", lambda s: None)
    todo = [processes.Task("ok", []), processes.Task("bad", []),
            processes.Task("after", [], needs=("ok", "bad"))]
    procs = {"ok": _FakeProcess(0), "bad": _FakeProcess(1)}
    assert processes.run_pool(todo, 2, lambda task, done: procs[task.name]) == ["bad", "after"]
    assert "after: not started (bad failed)" in capsys.readouterr().out

    class Running(_FakeProcess):
        terminated = False

        def poll(self):
            return 0 if self.terminated else None

        def terminate(self):
            self.terminated = True

    first = Running(0)

    def start(task, done):
        if task.name == "bad":
            raise RuntimeError("could not write the rates")
        return first

    with pytest.raises(RuntimeError, match="rates"):
        processes.run_pool(todo[:2], 2, start)
    assert first.terminated


def test_cost_line_counts_the_studys_own_runs_and_borrowed_ones_apart(tmp_path):
    def outcome(job_id_seed, cpu, wall, borrowed=False):
        job = study.Job("digits_mlp", "nested", job_id_seed, ["x=1"])
        if not borrowed:
            run = tmp_path / "runs" / job.job_id
            run.mkdir(parents=True)
            (run / study.COST_FILE).write_text(json.dumps({"cpu_seconds": cpu}))
        extra = {"borrowed_from": "elsewhere"} if borrowed else {}
        return study.Outcome(job, {"wall_time": wall}, extra=extra)

    outcomes = [outcome(0, 1800.0, 3600.0), outcome(1, 1800.0, 1800.0),
                outcome(2, 0.0, 7200.0, borrowed=True),
                study.Outcome(study.Job("digits_mlp", "nested", 3, []), None, error=study.NOT_RUN)]
    assert study.cost_line(outcomes, str(tmp_path)) == (
        "[cost] 2 runs, 1.00 CPU hours (3600 s over all cores), 1.50 hours of training wall "
        "time; 1 more runs borrowed from other studies")


def _fake_results(path, seed, metric, values, steps):
    path.mkdir(parents=True)
    path.joinpath("results.json").write_text(json.dumps({
        "metrics": {"test/accuracy": 0.5 + seed / 10, "val/best_loss": 1.0},
        "history": {metric: values, "train/loss": [2.0, 1.5]},
        "steps": steps, "wall_time": 10.0}))


def _compare_jobs(workload, opt, lr, seeds, out):
    """The jobs ``compare_optimizers.py`` runs for ``opt`` at ``lr``, from its own search
    (report only: nothing trains): the search's trial at ``lr`` is seed 0, and the other seeds
    reuse its overrides, as its ``main`` does."""
    compare = _script("compare_optimizers")
    _, trials = compare.tune(workload, opt, list(study.WORKLOADS[workload]), str(out),
                             quick=False, train=False)
    trial = trials[lr].job
    return [study.Job(workload, opt, s, trial.overrides, lr=lr) for s in seeds]


def _fake_comparison(compare_dir, workload, opt, lr, seeds, metric, curve_of, steps) -> str:
    """A comparison study whose ``opt`` runs at ``lr`` (``curve_of(seed)``: each seed's
    ``metric`` per epoch) finished on ``workload``, and its table: the table's path."""
    for job in _compare_jobs(workload, opt, lr, seeds, compare_dir):
        _fake_results(compare_dir / "runs" / job.job_id, job.seed, metric, curve_of(job.seed),
                      steps)
    path = compare_dir / "comparison.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["workload", "label", "lr"])
        writer.writeheader()
        writer.writerow({"workload": workload, "label": opt, "lr": lr})
    return str(path)


def test_ablation_full_is_the_comparisons_nested_run(tmp_path, capsys):
    lr = 0.003
    table = _fake_comparison(tmp_path / "compare", "digits_mlp", "nested", lr, (0, 1, 2),
                             "val/accuracy", lambda seed: [0.5, 0.8 + seed / 100], 20)
    out = tmp_path / "ablation"
    assert _script("ablation").main([
        "--out", str(out), "--lr-from", table,
        "--workloads", "digits_mlp", "--variants", "full", "one_tier", "--report"]) == 0
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [(r["workload"], r["label"]) for r in rows] == [("digits_mlp", "full")]
    assert float(rows[0]["test_acc_mean"]) == pytest.approx(0.6)      # seeds 0.5, 0.6, 0.7
    assert float(rows[0]["val_metric_mean"]) == pytest.approx(0.81)
    assert float(rows[0]["lr"]) == lr
    assert not (out / "runs").exists()                                # nothing trained here
    assert "digits_mlp one_tier: not complete" in capsys.readouterr().out


def test_horizon_middle_length_is_the_comparisons_run(tmp_path):
    table = _fake_comparison(tmp_path / "compare", "lm_transformer", "adam", 0.003, (0, 1),
                             "val/bits_per_byte", lambda seed: [3.0, 2.4 + seed / 10], 2030)
    out = tmp_path / "horizon"
    assert _script("horizon").main([
        "--out", str(out), "--lr-from", table,
        "--ablation", str(tmp_path / "ablation"), "--variants", "adam", "--report"]) == 0
    rows = list(csv.DictReader(open(out / "horizon.csv")))   # 1/3 and 9/3: not run, left out
    assert [(r["length"], r["steps"], r["label"]) for r in rows] == [("3", "2030", "adam")]
    assert float(rows[0]["best_val_bpb_mean"]) == pytest.approx(2.45)
    assert float(rows[0]["gap_to_adam"]) == 0.0
    assert not (out / "runs").exists()


def test_horizon_lengths_scale_the_corpus_not_the_epochs(tmp_path, monkeypatch):
    """The shorter and longer runs read 1/3 and 3x the workload's corpus over its epochs: the
    jobs the script asks for (recorded, not trained)."""
    horizon = _script("horizon")
    asked = []

    def fake_run_job(job, study_dir, base_overrides=(), train=True):
        asked.append(job)
        return study.Outcome(job, None, error=study.NOT_RUN)

    monkeypatch.setattr(study, "run_job", fake_run_job)
    assert horizon.main(["--out", str(tmp_path), "--variants", "nested", "--rates",
                         "nested=0.01", "--lr-from", str(tmp_path / "none.csv")]) == 0
    corpus = int(study.compose(study.WORKLOADS["lm_transformer"]).data.builder_kwargs.config
                 .max_bytes)
    sizes = {}
    for job in asked:
        sized = [o for o in job.overrides if o.startswith("data.builder_kwargs.config.max_bytes=")]
        sizes.setdefault(job.group, set()).add(sized[0].split("=")[1] if sized else None)
        assert not any(o.startswith(("trainer.epochs=", "trainer.max_steps=")) for o in
                       job.overrides[len(study.WORKLOADS["lm_transformer"]):])
        assert "optimizer.learning_rate=0.01" in job.overrides
    assert sizes == {"horizon1": {str(corpus // 3)}, "horizon3": {None},
                     "horizon9": {str(corpus * 3)}}


class _FakeProcess:
    def __init__(self, code):
        self.code, self.polls = code, 0

    def poll(self):
        self.polls += 1
        return self.code if self.polls > 1 else None

    @property
    def returncode(self):
        return self.code

    def wait(self):
        return self.code


def test_run_study_starts_each_task_once_its_needs_finished_jobs_at_a_time(tmp_path,
                                                                          monkeypatch, capsys):
    runner = _script("run_study")
    running, events, rates = [], [], []

    def fake_launch(args, jobs):
        name = f"{'compare' if args[0].startswith('compare') else args[0][:-3]} {args[-1]}"
        if "--report" in args:
            events.append(("report", args[0], args))
            return _FakeProcess(0)
        events.append(("start", name, len([p for p in running if p.poll() is None])))
        proc = _FakeProcess(5 if name == fail else 0)
        running.append(proc)
        return proc

    monkeypatch.setattr(runner, "launch", fake_launch)
    monkeypatch.setattr(runner, "write_rates", lambda root, opts: rates.append(opts))
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    run = tmp_path / "compare" / "runs" / "job"
    run.mkdir(parents=True)
    (run / "cost.json").write_text(json.dumps({"cpu_seconds": 5400.0}))
    fail = None
    todo = runner.tasks(str(tmp_path))
    assert runner.main(["--root", str(tmp_path), "--publish", "pub"]) == 0
    started = [e[1] for e in events if e[0] == "start"]
    assert sorted(started) == sorted(t.name for t in todo)           # each task once
    assert all(e[2] < 2 for e in events if e[0] == "start")           # 2 at a time
    assert started[:3] == ["compare nested", "compare adam", "compare ademamix"]
    for task in todo:  # a task starts after what it needs (tasks end in the order they start)
        assert all(started.index(n) < started.index(task.name) for n in task.needs), task
    horizon_one_tier = next(t for t in todo if t.name == "horizon nested_one_tier")
    assert set(horizon_one_tier.needs) == {"compare nested", "ablation one_tier"}
    assert all("nested" in opts for opts in rates)                   # rates before dependents
    reports = [e for e in events if e[0] == "report"]
    assert [r[1] for r in reports] == ["compare_optimizers.py", "ablation.py", "horizon.py"]
    assert all(r[2][-2:] == ["--publish", "pub"] for r in reports)
    out = capsys.readouterr().out
    assert "[study cost] 1 runs trained, 1.50 CPU hours" in out
    assert "all 1 invocations" in out
    (tmp_path / runner.INVOCATIONS).write_text(json.dumps({"2026-01-01T00:00:00": 5400.0}))
    events.clear()
    fail = "compare nested"  # its dependents do not start; the study says so and fails
    assert runner.main(["--root", str(tmp_path)]) == 1
    started = [e[1] for e in events if e[0] == "start"]
    assert not [n for n in started if n.startswith("ablation") or n in (
        "horizon nested", "horizon nested_one_tier")]
    assert "horizon adam" in started  # needs only the comparison of Adam
    out = capsys.readouterr().out
    assert "ablation full: not started" in out
    assert "all 2 invocations 1.50 hours" in out  # a killed invocation's 1.5 h counts
    assert len(json.loads((tmp_path / runner.INVOCATIONS).read_text())) == 2


def test_publish_copies_the_studys_tables_and_plots_and_nothing_else(tmp_path):
    src, dst = tmp_path / "study", tmp_path / "pub"
    src.mkdir()
    names = ["horizon.md", "horizon.csv", "horizon.png", "horizon_curves.png",
             "horizon_notes.txt", "horizons.png", "comparison.md", "runs"]
    for name in names:
        (src / name).mkdir() if name == "runs" else (src / name).write_text(name)
    study.publish(str(src), str(dst), "horizon")
    assert sorted(os.listdir(dst)) == ["horizon.csv", "horizon.md", "horizon.png",
                                       "horizon_curves.png"]
    assert (dst / "horizon.png").read_text() == "horizon.png"


def test_replace_file_keeps_concurrent_writers_of_one_process_apart(tmp_path):
    """The study's heartbeat thread and its final record write the same file: every write
    lands whole, none fails, and no temporary file is left."""
    import threading

    path = tmp_path / "invocations.json"
    errors = []

    def write(text):
        try:
            for _ in range(300):
                files.replace_file(str(path), text)
        except OSError as err:  # pragma: no cover - what a shared temporary name gives
            errors.append(err)

    texts = ["a" * 50_000, "b" * 70_000]
    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_text() in texts
    assert os.listdir(tmp_path) == ["invocations.json"]

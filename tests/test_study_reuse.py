"""The study's plumbing: training processes sized to their share of the cores, a process per
label, and runs shared between studies (the ablation's ``full`` and the horizon's middle length
are the comparison's runs: ``study.borrow``), checked without training anything."""

import csv
import importlib.util
import json
import os
import pathlib

import pytest

from nested_research import study

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worker_env_sizes_the_pools_and_keeps_the_users(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    env = study.worker_env(2, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "1"}
    assert study.worker_env(16, {})["TF_NUM_INTRAOP_THREADS"] == "1"
    mine = {"TF_NUM_INTRAOP_THREADS": "3", "TF_NUM_INTEROP_THREADS": "2"}
    assert study.worker_env(2, mine) == mine


def test_train_in_processes_runs_a_process_per_label_at_most_jobs_at_once(tmp_path, monkeypatch):
    log = tmp_path / "log"
    log.mkdir()
    script = tmp_path / "child.py"
    script.write_text(
        "import os, sys, time\n"
        "label = sys.argv[-1]\n"
        "start = time.time()\n"
        "time.sleep(0.4)\n"
        f"open(os.path.join({str(log)!r}, label), 'w').write("
        "f\"{start} {time.time()} {os.environ['TF_NUM_INTRAOP_THREADS']} {sys.argv[1:]}\")\n"
        "sys.exit(3 if label == 'bad' else 0)\n")
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    labels = ["a", "b", "c", "d", "e"]
    study.train_in_processes(str(script), ["--out", "x"], "--variants", labels, 2)
    records = {p.name: p.read_text().split(" ", 3) for p in log.iterdir()}
    assert sorted(records) == labels
    spans = [(float(r[0]), float(r[1])) for r in records.values()]
    for start, _ in spans:  # never more than 2 running at once
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    assert {r[2] for r in records.values()} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert records["c"][3] == str(["--out", "x", "--variants", "c"])
    with pytest.raises(SystemExit, match="exit codes"):
        study.train_in_processes(str(script), [], "--variants", ["a", "bad"], 2)


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


def _write_table(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["workload", "label", "lr"])
        writer.writeheader()
        writer.writerows(rows)


def test_ablation_full_is_the_comparisons_nested_run(tmp_path, capsys):
    compare_dir = tmp_path / "compare"
    lr = 0.003
    for job in _compare_jobs("digits_mlp", "nested", lr, (0, 1, 2), compare_dir):
        _fake_results(compare_dir / "runs" / job.job_id, job.seed, "val/accuracy",
                      [0.5, 0.8 + job.seed / 100], 20)
    _write_table(compare_dir / "comparison.csv",
                 [{"workload": "digits_mlp", "label": "nested", "lr": lr}])
    out = tmp_path / "ablation"
    assert _script("ablation").main([
        "--out", str(out), "--lr-from", str(compare_dir / "comparison.csv"),
        "--workloads", "digits_mlp", "--variants", "full", "one_tier", "--report"]) == 0
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [(r["workload"], r["label"]) for r in rows] == [("digits_mlp", "full")]
    assert float(rows[0]["test_acc_mean"]) == pytest.approx(0.6)      # seeds 0.5, 0.6, 0.7
    assert float(rows[0]["val_metric_mean"]) == pytest.approx(0.81)
    assert float(rows[0]["lr"]) == lr
    assert not (out / "runs").exists()                                # nothing trained here
    assert "digits_mlp one_tier: not complete" in capsys.readouterr().out


def test_horizon_middle_length_is_the_comparisons_run(tmp_path):
    compare_dir = tmp_path / "compare"
    lr = 0.003
    for job in _compare_jobs("lm_transformer", "adam", lr, (0, 1), compare_dir):
        _fake_results(compare_dir / "runs" / job.job_id, job.seed, "val/bits_per_byte",
                      [3.0, 2.4 + job.seed / 10], 2030)
    _write_table(compare_dir / "comparison.csv",
                 [{"workload": "lm_transformer", "label": "adam", "lr": lr}])
    out = tmp_path / "horizon"
    assert _script("horizon").main([
        "--out", str(out), "--lr-from", str(compare_dir / "comparison.csv"),
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


def test_run_study_runs_the_three_steps_in_order_and_stops_at_a_failure(tmp_path, monkeypatch,
                                                                         capsys):
    runner = _script("run_study")
    calls = []

    def fake_call(args):
        calls.append(args)
        if args[1].endswith("horizon.py"):  # the horizon's runs: one of 30 CPU minutes
            _cost(tmp_path / "horizon", 1800.0)
        return 7 if fail and args[1].endswith("ablation.py") else 0

    def _cost(study_dir, seconds):
        run = study_dir / "runs" / f"job{len(calls)}"
        run.mkdir(parents=True)
        (run / "cost.json").write_text(json.dumps({"cpu_seconds": seconds}))

    monkeypatch.setattr(runner.subprocess, "call", fake_call)
    _cost(tmp_path / "compare", 3600.0)
    fail = False
    assert runner.main(["--root", str(tmp_path), "--publish", "pub"]) == 0
    assert [os.path.basename(c[1]) for c in calls] == ["compare_optimizers.py", "ablation.py",
                                                       "horizon.py"]
    table = str(tmp_path / "compare" / "comparison.csv")
    assert calls[1][calls[1].index("--lr-from") + 1] == table
    assert calls[2][calls[2].index("--ablation") + 1] == str(tmp_path / "ablation")
    assert all(c[c.index("--jobs") + 1] == "2" and c[c.index("--publish") + 1] == "pub"
               for c in calls)
    assert "[study cost] 2 runs trained, 1.50 CPU hours" in capsys.readouterr().out
    calls.clear()
    fail = True
    assert runner.main(["--root", str(tmp_path)]) == 7
    assert len(calls) == 2  # the horizon does not start after a failed ablation

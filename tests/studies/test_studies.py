"""Sweep definitions, the local sweep runner, and the comparison / ablation studies."""

import csv
import functools
import json
import pathlib
import subprocess
import sys
from unittest import mock

import pytest
import yaml

from nested_research.studies.sweep import LocalSweep, expand_command, hydra_overrides, load_sweep

from early import Early, selected

from repo import ROOT
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


#: The study commands, by the script name of scripts/ that runs them.
STUDY_MODULES = {"compare_optimizers": "comparison", "ablation": "ablation",
                 "horizon": "horizon", "run_study": "run_all"}


def _values(spec):
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return spec["values"]
    return [spec["min"], spec["max"]]


def test_sweep_files_present():
    names = {p.stem for p in SWEEPS}
    assert {"lr_per_optimizer", "nested_space", "ablation_grid"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_schema_and_every_parameter_accepted(path, data_dir):
    import sweeps

    from nested_research.studies.runner import compose
    from nested_research.train import validate

    config = load_sweep(str(path))
    assert sweeps.schema_violations_from_proposed_config(config) == []
    assert "${args_no_hyphens}" in config["command"]
    assert config["program"] == "nested_research.train"
    assert config["metric"]["name"] in ("val/accuracy", "val/loss", "test/accuracy")
    params = config["parameters"]
    # every value of every parameter composes and validates (the others at their first value)
    for name, spec in params.items():
        for value in _values(spec):
            chosen = {k: _values(s)[0] for k, s in params.items()}
            chosen[name] = value
            validate(compose(hydra_overrides(chosen)))
    argv = expand_command(config, ["memory=fixed"])
    assert argv[1:4] == ["-m", "nested_research.train", "memory=fixed"]


def _write(tmp_path, config):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


COMMAND = ["${env}", "${interpreter}", "-m", "${program}", "${args_no_hyphens}"]

RANDOM_SWEEP = {
    "name": "tiny_random", "program": "nested_research.train", "method": "random",
    "metric": {"name": "val/accuracy", "goal": "maximize"},
    "parameters": {
        "memory": {"values": ["attention", "fixed"]},
        "optimizer.learning_rate": {"distribution": "log_uniform_values",
                                    "min": 1e-4, "max": 1e-2},
        # half of the trials get an invalid decay: they must fail, not stop the sweep
        "memory.short_term_decay": {"values": [0.9, 1.5]},
    },
    "command": COMMAND,
}
HYPERBAND_SWEEP = {
    "name": "tiny_hyperband", "program": "nested_research.train", "method": "grid",
    "metric": {"name": "val/accuracy", "goal": "maximize"},
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    # hyperband keeps the top 1/eta at each band: the third, hopeless trial is cut
    "parameters": {"optimizer.learning_rate": {"values": [0.003, 0.001, 0.000001]}},
    "command": COMMAND,
}


def _random_sweep(tmp_path):
    """``(sweep, trials)``: 4 trials of RANDOM_SWEEP in ``tmp_path / "sweep"``."""
    import random

    import sweeps.params

    out = tmp_path / "sweep"
    sweep = LocalSweep(load_sweep(_write(tmp_path, RANDOM_SWEEP)), str(out),
                       ["logger=none", "trainer.max_steps=3", "trainer.epochs=1",
                        "trainer.verbose=0"], poll=0.2)
    # The engine samples with the `random` module.  Its own generator, seeded as conftest
    # seeds each test, draws the same trials while tests running meanwhile reseed the global.
    with mock.patch.object(sweeps.params, "random", random.Random(0)):
        return sweep, sweep.run(4)


def _hyperband_sweep(tmp_path):
    """The 3 trials of HYPERBAND_SWEEP (good, also good, bad)."""
    sweep = LocalSweep(load_sweep(_write(tmp_path, HYPERBAND_SWEEP)), str(tmp_path / "hb"),
                       ["logger=none", "trainer.epochs=8", "trainer.batch_size=16",
                        "trainer.verbose=0", "lr_schedule=constant"], poll=0.05)
    return sweep.run(3)


@pytest.fixture(scope="module", autouse=True)
def local_sweeps(request, tmp_path_factory, digits_prepared):
    """The two local sweeps (7 training subprocesses), one after the other in a thread from
    the module's first test on (tests/early.py); the tests that read them come last here.
    Nothing else in this module changes the environment or the working directory, which
    each trial's subprocess inherits.  ``{"random": dir, "hyperband": dir, "runs": Early}``."""
    found, jobs = {}, {}
    for name, test, run in [
            ("random", "test_local_random_sweep_records_failures_and_goes_on", _random_sweep),
            ("hyperband", "test_local_hyperband_sweep_stops_a_bad_trial", _hyperband_sweep)]:
        if selected(request, test):
            found[name] = tmp_path_factory.mktemp(f"{name}_sweep")
            jobs[name] = functools.partial(run, found[name])
    found["runs"] = Early(jobs)
    yield found
    found["runs"].close()


def test_sweep_cli_rejects_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"method": "sideways", "parameters": {}}))
    proc = subprocess.run([sys.executable, "-m", "nested_research.studies.sweep", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "sideways" in proc.stderr


# ---------------------------------------------------------------- studies
def _run_script(name, out, extra=()):
    import importlib

    module = importlib.import_module(f"nested_research.studies.{STUDY_MODULES[name]}")
    assert module.main(["--quick", "--out", str(out), *extra]) == 0
    return module


def _fewer_steps(monkeypatch, workloads):
    """The default run's quick workloads (``--workloads`` given) take 2 steps per run instead
    of a few more: the tables, plots and resume checked here do not depend on how far the
    runs get (the slow, all-workload runs keep the study's quick sizes)."""
    from nested_research.studies import runner as study

    for name in workloads or ():
        kept = [o for o in study.QUICK_WORKLOADS[name] if not o.startswith("trainer.max_steps=")]
        monkeypatch.setitem(study.QUICK_WORKLOADS, name, kept + ["trainer.max_steps=2"])


def _table_rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


#: A subset of the family for the quick comparison (one Keras optimizer, one of ours, the
#: nested one); the default list is every conf/optimizer file (test below).
QUICK_FAMILY = ["nested", "adam", "ademamix"]


def test_comparison_covers_every_conf_optimizer():
    import importlib

    module = importlib.import_module("nested_research.studies.comparison")
    assert module.OPTIMIZERS[0] == "nested"
    assert sorted(module.OPTIMIZERS) == sorted(p.stem for p in (ROOT / "conf" /
                                                                "optimizer").glob("*.yaml"))
    assert {"ademamix", "muon", "m3", "delta_momentum", "adam", "sgd"} <= set(module.OPTIMIZERS)
    # the learning-rate sweep too, on a grid that holds every optimizer's default rate
    from nested_research.studies.runner import default_lr

    sweep = load_sweep(str(ROOT / "sweeps" / "lr_per_optimizer.yaml"))["parameters"]
    assert sorted(sweep["optimizer"]["values"]) == sorted(module.OPTIMIZERS)
    grid = sweep["optimizer.learning_rate"]["values"]
    for name in module.OPTIMIZERS:
        assert min(grid) <= default_lr(name) <= max(grid), name


@pytest.mark.parametrize("workloads", [
    ["digits_mlp"],
    pytest.param(None, marks=pytest.mark.slow),   # all workloads: same code path, longer
])
def test_compare_optimizers_quick(workloads, tmp_path, data_dir, monkeypatch):
    # (the study's own quick sizes: its training processes do not see a monkeypatch)
    out = tmp_path / "compare"
    extra = (["--workloads", *workloads] if workloads else []) + ["--optimizers", *QUICK_FAMILY]
    _run_script("compare_optimizers", out, extra + ["--jobs", "2"])  # trains in 2 processes
    rows = _table_rows(out / "comparison.csv")
    got = {(r["workload"], r["label"]) for r in rows}
    from nested_research.studies.runner import QUICK_WORKLOADS

    assert got == {(w, o) for w in (workloads or QUICK_WORKLOADS) for o in QUICK_FAMILY}
    assert {"test_acc_mean", "test_acc_std", "best_val_loss_mean", "steps_to_target",
            "loss_spikes", "ratio_to_best", "score", "seconds_to_target", "metric", "target",
            "lr_trials", "lr_at_edge"} <= set(rows[0])
    for r in rows:
        assert r["seeds"] == "2" and r["failed"] == "0"
        assert len(r["lr_trials"].split()) == 2  # the quick search: default x {1, 3}
        assert 0.0 <= float(r["score"]) <= 1.0
    md = (out / "comparison.md").read_text()
    assert md.count("\n") == 2 + len(rows) + 3 + len(QUICK_FAMILY)  # rows, then the scores
    for png in ("comparison_curves.png", "comparison_lr.png", "comparison_profile.png"):
        assert (out / png).stat().st_size > 10_000
    # a second run resumes: nothing is trained again
    stamps = {p: p.stat().st_mtime for p in out.glob("runs/*/results.json")}
    _run_script("compare_optimizers", out, extra)
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/results.json")} == stamps
    assert (out / "comparison.md").read_text() == md
    # a report trains nothing and leaves out what is not complete (sgd: never run)
    _run_script("compare_optimizers", out, extra + ["sgd", "--report"])
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/results.json")} == stamps
    assert (out / "comparison.md").read_text() == md


#: The variants the quick ablation trains: the memory modes, cosine scoring (every variant's
#: overrides compose and validate, with what they set: the test below).
QUICK_VARIANTS = ["full", "no_memory", "adaptive_retrieval", "cosine_retrieval"]


def test_every_ablation_variant_composes_and_validates(data_dir):
    import importlib

    from nested_research.studies.runner import WORKLOADS, compose
    from nested_research.train import validate

    module = importlib.import_module("nested_research.studies.ablation")
    assert set(QUICK_VARIANTS) < set(module.VARIANTS)
    for name, overrides in module.VARIANTS.items():
        cfg = compose(WORKLOADS["digits_mlp"] + ["optimizer=nested"] + overrides)
        validate(cfg)
        assert (name == "full") == (overrides == [])
    compressed = compose(["optimizer=nested"] + module.VARIANTS["compression_r4"])
    assert compressed.optimizer.params.compression_rank == 4
    assert compressed.optimizer.params.use_gradient_compression is True
    assert compose(["optimizer=nested"] + module.VARIANTS["fixed_retrieval"]) \
        .memory.memory_blend_mode == "fixed"
    cosine = compose(["optimizer=nested"] + module.VARIANTS["cosine_retrieval"])
    assert cosine.memory.memory_blend_mode == "attention"
    assert cosine.memory.attention_scoring == "cosine"


@pytest.mark.parametrize("workloads", [
    ["digits_mlp"],
    pytest.param(None, marks=pytest.mark.slow),   # all workloads: same code path, longer
])
def test_ablation_quick(workloads, tmp_path, data_dir, monkeypatch):
    _fewer_steps(monkeypatch, workloads)
    out = tmp_path / "ablation"
    extra = (["--workloads", *workloads] if workloads else []) + ["--variants", *QUICK_VARIANTS]
    _run_script("ablation", out, extra)
    rows = _table_rows(out / "ablation.csv")
    from nested_research.studies.runner import QUICK_WORKLOADS

    assert {(r["workload"], r["label"]) for r in rows} == \
        {(w, v) for w in (workloads or QUICK_WORKLOADS) for v in QUICK_VARIANTS}
    assert (out / "ablation_curves.png").stat().st_size > 10_000
    assert (out / "ablation_profile.png").stat().st_size > 10_000
    # a report trains nothing and tabulates the complete variants only (one_tier: never run)
    md = (out / "ablation.md").read_text()
    stamps = {p: p.stat().st_mtime for p in out.glob("runs/*/results.json")}
    _run_script("ablation", out, extra + ["one_tier", "--report"])
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/results.json")} == stamps
    assert (out / "ablation.md").read_text() == md
    runs = list(out.glob("runs/*/results.json"))
    configs = {json.loads(p.read_text())["config"]["memory"]["memory_blend_mode"] for p in runs}
    assert configs == {"attention", "adaptive", "none"}
    scorings = {json.loads(p.read_text())["config"]["memory"]["attention_scoring"]
                for p in runs if "cosine_retrieval" in str(p)}
    assert scorings == {"cosine"}


# ---------------------------------------------------------------- local sweeps (started early)
def test_local_random_sweep_records_failures_and_goes_on(local_sweeps):
    sweep, trials = local_sweeps["runs"].result("random")
    tmp_path = local_sweeps["random"]
    config, out = RANDOM_SWEEP, tmp_path / "sweep"
    states = {t.name: (t.state, t.params["memory.short_term_decay"]) for t in trials}
    assert len(trials) == 4
    for state, decay in states.values():
        assert state == ("failed" if decay == 1.5 else "finished")
    ok = [t for t in trials if t.state == "finished"]
    assert ok and all(0.0 <= t.metric <= 1.0 for t in ok)
    record = json.loads((out / "sweep.json").read_text())
    assert len(record["trials"]) == 4
    board = sweep.leaderboard()
    assert board.count("\n") == 1 + 4 and "tiny_random" not in board.splitlines()[0]
    # resuming runs only new trials
    again = LocalSweep(load_sweep(_write(tmp_path, config)), str(out), sweep.extra)
    assert len(again.trials) == 4


def test_local_hyperband_sweep_stops_a_bad_trial(local_sweeps):
    good, also_good, bad = local_sweeps["runs"].result("hyperband")
    assert good.state == also_good.state == "finished" and len(good.history) == 8
    assert bad.state == "stopped" and len(bad.history) < 8
    assert bad.metric < min(good.metric, also_good.metric)


def test_horizon_quick(tmp_path, data_dir, monkeypatch):
    """The horizon script on 1- and 2-step runs of two variants, one seed: a row per length and
    variant, each length's Adam gap 0, the run lengths as told; ``--report`` and a second run
    train nothing, and a report leaves an incomplete variant out."""
    import importlib

    module = importlib.import_module("nested_research.studies.horizon")
    monkeypatch.setattr(module, "LENGTHS", (1, 2))
    monkeypatch.setattr(module, "SEEDS", (0,))
    monkeypatch.setattr(module, "VARIANTS", {k: module.VARIANTS[k]
                                             for k in ("nested_one_tier", "adam")})
    out = tmp_path / "horizon"
    assert module.main(["--quick", "--out", str(out), "--variants", "adam"]) == 0
    assert module.main(["--quick", "--out", str(out), "--report"]) == 0  # trains nothing:
    assert len(list(out.glob("runs/*/results.json"))) == 2               # one-tier left out
    assert {r["label"] for r in _table_rows(out / "horizon.csv")} == {"adam"}
    assert module.main(["--quick", "--out", str(out)]) == 0
    rows = _table_rows(out / "horizon.csv")
    assert [(r["steps"], r["label"]) for r in rows] == [
        ("1", "adam"), ("1", "nested_one_tier"), ("2", "adam"), ("2", "nested_one_tier")]
    for r in rows:
        assert r["failed"] == "0" and float(r["best_val_bpb_mean"]) > 0
        if r["label"] == "adam":
            assert float(r["gap_to_adam"]) == 0.0
    runs = sorted(out.glob("runs/*/results.json"))
    assert sorted(json.loads(p.read_text())["steps"] for p in runs) == [1, 1, 2, 2]
    one_tier = [json.loads(p.read_text())["config"]["memory"] for p in runs
                if "nested_one_tier" in str(p)]
    assert all(m["memory_blend_mode"] == "fixed" and m["short_term_weight"] == 1.0
               and m["long_term_weight"] == 0.0 for m in one_tier)
    assert (out / "horizon.png").stat().st_size > 10_000
    stamps = {p: p.stat().st_mtime for p in runs}
    assert module.main(["--quick", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime for p in out.glob("runs/*/results.json")} == stamps

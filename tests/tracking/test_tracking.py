"""Experiment tracking: what a W&B offline run records, read back from its own ``.wandb`` file.

Every check reads the run's transaction log with ``nested_research.tracking.reader`` (the
LevelDB-framed ``wandb_internal_pb2.Record`` stream), never the tracker's own state.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nested_research import M3, AdEMAMix, NestedLearningOptimizer
from nested_research.optimizers.nested.intervals import applied_updates
from nested_research.optimizers.nested.layer_stats import FIELDS, last_update_step, layer_of
from nested_research.optimizers.protocols import StatefulOptimizer
from nested_research.tracking.probes import LearningRateLog
from nested_research.tracking.schedule_report import schedule_steps
from nested_research.tracking.trackers import WandbTracker, default_run_name
from nested_research.train import build_learning_rate, run
from nested_research.tracking.reader import iter_records, read_run

from repo import ROOT
CONF = ROOT / "conf"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)


def cfg_for(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def the_run(wandb_dir) -> "object":
    runs = sorted(pathlib.Path(wandb_dir).glob("wandb/offline-run-*"))
    assert len(runs) == 1, runs
    return read_run(str(runs[0]))


def layer_rows(run):
    """History rows that carry per-layer statistics (not the end-of-run tables)."""
    return [r for r in run.history
            if any(k.startswith("layers/") and k != "layers/final" for k in r)]


# Linear depth curve, max_interval 4, four weight layers: intervals 4, 3, 2, 1.
SCHEDULE = ["schedule_curve=linear", "schedule_curve.max_interval=4"]
INTERVALS = [4, 3, 2, 1]


# ---------------------------------------------------------------- end to end through train.run
def test_offline_run_records_config_metrics_layers_schedule(tmp_path, data_dir):
    wdir = tmp_path / "w"
    cfg = cfg_for("experiment=digits_mlp", "memory=attention", *SCHEDULE, "trainer.max_steps=12",
                  "trainer.verbose=0", "logger.stats_every=4", "logger.timing_every=4",
                  "logger.log_model=true", f"logger.dir={wdir}")  # log_every: the default, 10
    out = tmp_path / "run"
    run(cfg, str(out))
    results = json.loads((out / "results.json").read_text())
    wb = the_run(wdir)

    # The resolved config is the run config; name, group and tags come from it.
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in ("optimizer", "memory", "schedule_curve", "lr_schedule", "trainer", "logger"):
        assert wb.config[key] == config[key], key
    assert wb.config["versions"] == results["config"]["versions"]  # (what it ran with)
    assert wb.config["versions"]["keras"] == keras.__version__
    assert wb.name == "digits_mlp-nested-attention-s0"
    assert wb.group == "digits_mlp" and "experiment:digits_mlp" in wb.tags
    assert wb.exit_code == 0
    assert wb.metrics["train/*"] == wb.metrics["layers/*"] == "trainer/step"
    assert wb.metrics["val/*"] == "trainer/epoch"

    # train/* every log_every=10 steps and on logging steps, with the learning rate the step
    # used (the schedule at its index).
    train = [r for r in wb.history if "train/loss" in r]
    assert [r["trainer/step"] for r in train] == [4, 8, 10, 12]
    data = instantiate(cfg.data, batch_size=cfg.trainer.batch_size, seed=0, _convert_="all")
    schedule = build_learning_rate(cfg, steps_per_epoch=data.steps_per_epoch, total_steps=12)
    want_lr = np.asarray(schedule(np.arange(12)))
    np.testing.assert_allclose([r["train/lr"] for r in train],
                               [want_lr[r["trainer/step"] - 1] for r in train], rtol=1e-6)
    assert want_lr[0] < want_lr[-1]  # the per-epoch warmup is visible
    lr_table = wb.table("schedule/lr")  # every step's rate, also the steps not logged
    assert [r["trainer/step"] for r in lr_table] == list(range(1, 13))
    np.testing.assert_allclose([r["lr"] for r in lr_table], want_lr, rtol=1e-6)
    assert all(r["timing/step_ms"] > 0 for r in train)
    assert [r["trainer/epoch"] for r in wb.history if "val/loss" in r] == [1]

    # Per-layer statistics on steps 4, 8, 12 only, for every layer of the model.
    model = instantiate(cfg.model, input_shape=(8, 8, 1), num_classes=10, _convert_="all")
    layers = list(dict.fromkeys(layer_of(v.path) for v in model.trainable_variables))
    rows = layer_rows(wb)
    assert [r["trainer/step"] for r in rows] == [4, 8, 12]
    for row in rows:
        for layer in layers:
            for field in FIELDS:
                assert f"layers/{layer}/{field}" in row, (layer, field)
    for row in rows:
        step = row["trainer/step"]
        for layer, k in zip(layers, INTERVALS):
            assert row[f"layers/{layer}/interval"] == k
            assert row[f"layers/{layer}/applied_updates"] == applied_updates(step, k, 0)
            # recorded at the layer's last update (0-based step index)
            assert row[f"layers/{layer}/stats_step"] == last_update_step(step, k, 0)
            assert row[f"layers/{layer}/update_ratio"] > 0
    final = rows[-1]
    # interval 3 over 12 steps = 4 updates; interval 4: 3; interval 2: 6; every step: 12.
    assert [final[f"layers/{layer}/applied_updates"] for layer in layers] == [3, 4, 6, 12]

    # Interval timing on steps 4, 8, 12: the optimizer's share of step time.
    timed = [r for r in wb.history if "timing/optimizer_ms" in r]
    assert [r["trainer/step"] for r in timed] == [4, 8, 12]
    for r in timed:
        assert r["timing/optimizer_ms"] > 0 and 0 < r["timing/optimizer_share"] < 10

    # End of run: schedule table, heatmap image, per-layer table, summary, results.json.
    table = wb.table("schedule/table")
    assert [t["layer"] for t in table] == layers
    assert [t["interval"] for t in table] == INTERVALS
    assert [t["applied_updates"] for t in table] == [t["expected_updates"] for t in table] \
        == [3, 4, 6, 12]
    assert [t["depth"] for t in table] == [0, 1, 2, 3]
    heatmap = wb.rows_with("schedule/heatmap")[-1]["schedule/heatmap"]
    png = pathlib.Path(wb.files_dir) / heatmap["path"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [t["layer"] for t in wb.table("layers/final")] == layers
    for key in ("test/accuracy", "val/loss", "train/loss"):
        assert wb.summary[key] == pytest.approx(results["metrics"][key])
    assert "results.json" in wb.files
    saved = json.loads((pathlib.Path(wb.files_dir) / "results.json").read_text())
    assert saved["metrics"] == results["metrics"]
    assert (f"model-{wb.run_id}", "model") in wb.artifacts  # logger.log_model=true


# ---------------------------------------------------------------- values, and cost on other steps
class _Probe(keras.callbacks.Callback):
    """memory_stats() on every step where iterations % every == 0 (after the tracker's read)."""

    def __init__(self, opt, every):
        super().__init__()
        self.opt, self.every, self.seen = opt, every, {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.opt.iterations.numpy())
        if step % self.every == 0:
            self.seen[step] = self.opt.memory_stats()


def _train(tmp_path, memory, tracked: bool, steps=12, every=4):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * 8, 6)).astype("float32")
    y = rng.integers(0, 3, size=(steps * 8,)).astype("int32")
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="a")(inputs)
    h = keras.layers.Dense(8, activation="relu", name="b")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="c")(h))
    opt = NestedLearningOptimizer(learning_rate=0.01, memory_blend_mode=memory, max_interval=3,
                                  stats_every=every, steps_per_epoch=5)
    opt.compute_depths_from_model(model)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(True))
    tracker, probe = None, _Probe(opt, every)
    callbacks = [probe]
    if tracked:
        tracker = WandbTracker(dir=str(tmp_path), stats_every=every, timing_every=2,
                               log_every=1)
        tracker.start({"memory": {"memory_blend_mode": memory}}, str(tmp_path))
        callbacks = tracker.callbacks(opt) + callbacks
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    if tracker is not None:
        tracker.finish({"done": 1.0}, optimizer=opt)
    return model, opt, tracker, probe


@pytest.mark.parametrize("memory", ["adaptive", "none"])
def test_logged_values_match_memory_stats_and_cost_nothing_elsewhere(tmp_path, memory):
    model, opt, tracker, probe = _train(tmp_path, memory, tracked=True)
    wb = the_run(tmp_path)
    rows = {r["trainer/step"]: r for r in layer_rows(wb)}
    assert sorted(rows) == sorted(probe.seen) == [4, 8, 12]
    for step, stats in probe.seen.items():
        for layer, want in stats.items():
            for field, value in want.items():
                key = f"layers/{layer}/{field}"
                if value is None:
                    assert key not in rows[step]
                elif isinstance(value, int):
                    assert rows[step][key] == value, key
                else:
                    assert rows[step][key] == pytest.approx(value, rel=2e-4, abs=1e-6), key
    # The layout of the schedule: intervals 3, 2, 1 over 12 steps.
    assert [rows[12][f"layers/{n}/applied_updates"] for n in "abc"] == [4, 6, 12]

    # Nothing runs on the other steps: one read per logging step (+1 at the end), one trace
    # of the reduction, the optimizer timed on timing steps only (and traced once).
    cb = tracker.callback
    assert cb.reader.calls == 3 + 1 and cb.reader.traces == 1
    assert cb.timer.calls == 6  # steps 2, 4, ..., 12
    assert cb.timer._fn.experimental_get_tracing_count() == 1
    other = [r for r in wb.history if "train/loss" in r and r["trainer/step"] % 4]
    assert other and not any(k.startswith("layers/") for r in other for k in r)

    # Timing restores the state it touches: training is exactly as without the tracker.
    if memory != "adaptive":
        return  # (once is enough)
    keras.backend.clear_session()
    plain_model, plain_opt, _, _ = _train(tmp_path / "plain", memory, tracked=False)
    for a, b in zip(model.get_weights(), plain_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(opt.variables, plain_opt.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


# ---------------------------------------------------------------- failure, logger=none
def test_failed_job_still_finishes_run_with_exit_code_1(tmp_path, data_dir, monkeypatch):
    import nested_research.training.fit as trainer

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 5:
                raise RuntimeError("boom at step 6")

    real_fit = trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda *a, callbacks=(), **kw: real_fit(
        *a, callbacks=list(callbacks) + [Boom()], **kw))
    cfg = cfg_for("trainer.max_steps=12", "trainer.verbose=0", "logger.stats_every=4",
                  "logger.timing_every=0", "logger.log_every=1", f"logger.dir={tmp_path}")
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg, str(tmp_path / "run"))
    wb = the_run(tmp_path)
    assert wb.exit_code == 1
    assert wb.summary["failed"] is True and "RuntimeError: boom at step 6" in wb.summary["error"]
    assert [r["trainer/step"] for r in wb.history if "train/loss" in r] == list(range(1, 7))
    assert [r["trainer/step"] for r in layer_rows(wb)] == [4]
    assert wb.table("schedule/table")  # the end-of-run table is written for a failed run too


def test_logger_none_prints_the_per_layer_table(tmp_path, data_dir, capsys):
    cfg = cfg_for("logger=none", "trainer.max_steps=8", "trainer.verbose=0",
                  "logger.stats_every=4", *SCHEDULE)
    run(cfg, str(tmp_path / "run"))
    out = capsys.readouterr().out
    table = out[out.index("Per-layer optimizer state:"):].splitlines()[1:]
    assert table[0].split()[:4] == ["layer", "depth", "interval", "applied_updates"]
    assert "cos_short" in table[0] and "update_ratio" in table[0]
    assert [line.split()[0] for line in table[2:6]] == ["dense_0", "dense_1", "dense_2",
                                                        "logits"]
    assert [int(line.split()[3]) for line in table[2:6]] == [2, 2, 4, 8]
    assert not (tmp_path / "wandb").exists()


# ---------------------------------------------------------------- multirun, env, sweep id
def test_jobs_get_their_own_runs_under_wandb_dir_with_sweep_id(tmp_path, data_dir,
                                                               monkeypatch):
    """Two jobs of one process (as a Hydra multirun or a sweep agent runs them)."""
    import nested_research.tracking.trackers as tracking

    wdir = tmp_path / "wandb_env_dir"
    monkeypatch.setenv("WANDB_DIR", str(wdir))
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    for num, memory in enumerate(["attention", "fixed"]):
        monkeypatch.setattr(tracking, "_hydra_job", lambda num=num: {
            "num": num, "override_dirname": f"memory={memory}", "sweep_dir": str(tmp_path)})
        cfg = cfg_for(f"memory={memory}", "trainer.max_steps=3", "trainer.verbose=0",
                      "logger.stats_every=3", "logger.timing_every=0",
                      f"logger.dir={tmp_path / 'ignored'}")
        run(cfg, str(tmp_path / f"job{num}"))
    runs = [read_run(str(p)) for p in sorted(wdir.glob("wandb/offline-run-*"))]
    assert len(runs) == 2 and len({r.run_id for r in runs}) == 2
    assert not (tmp_path / "ignored").exists()  # WANDB_DIR wins over logger.dir
    by_mode = {r.config["memory"]["memory_blend_mode"]: r for r in runs}
    assert set(by_mode) == {"attention", "fixed"}
    for num, memory in enumerate(["attention", "fixed"]):
        r = by_mode[memory]
        assert r.exit_code == 0
        assert "sweep:sweep123" in r.tags and r.group == "sweep123"
        assert r.config["sweep_id"] == "sweep123" and r.config["hydra_job"]["num"] == num
        assert r.name == f"sklearn_digits_mlp-nested-{memory}-s0-j{num}"
        assert [row["trainer/step"] for row in layer_rows(r)] == [3]


@pytest.mark.slow
def test_multirun_jobs_get_their_own_runs_under_wandb_dir(tmp_path, data_dir):
    wdir = tmp_path / "wandb_env_dir"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", WANDB_MODE="offline",
               WANDB_DIR=str(wdir), WANDB_SWEEP_ID="sweep123",
               NESTED_RESEARCH_OUTPUT_DIR=str(tmp_path / "outputs"))
    proc = subprocess.run(
        [sys.executable, "-m", "nested_research.train", "-m", "memory=attention,fixed",
         "trainer.max_steps=3", "trainer.verbose=0", "logger.stats_every=3",
         "logger.timing_every=0"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [read_run(str(p)) for p in sorted(wdir.glob("wandb/offline-run-*"))]
    assert len(runs) == 2 and len({r.run_id for r in runs}) == 2
    assert not (tmp_path / "outputs" / "wandb").exists()  # WANDB_DIR wins over logger.dir
    by_mode = {r.config["memory"]["memory_blend_mode"]: r for r in runs}
    assert set(by_mode) == {"attention", "fixed"}
    for r in runs:
        assert r.exit_code == 0
        assert "sweep:sweep123" in r.tags and r.group == "sweep123"
        assert r.config["sweep_id"] == "sweep123"
        assert r.name.startswith("sklearn_digits_mlp-nested-") and r.name[-3:] in ("-j0", "-j1")
        assert [row["trainer/step"] for row in layer_rows(r)] == [3]
    assert proc.stdout.count("wandb sync ") == 2


# ---------------------------------------------------------------- pieces
def test_reader_joins_records_split_across_blocks(tmp_path):
    import wandb

    big = "x" * 70000  # > two 32 KiB blocks: FIRST, MIDDLE, LAST chunks
    run_ = wandb.init(project="p", dir=str(tmp_path), mode="offline", config={"big": big},
                      settings=wandb.Settings(silent=True, x_disable_stats=True),
                      reinit="create_new")
    for i in range(3):
        run_.log({"i": i, "blob": big if i == 1 else "small"})
    run_.finish()
    wb = read_run(str(next(tmp_path.glob("wandb/offline-run-*"))), wait=30)
    assert wb.config["big"] == big
    assert [r["i"] for r in wb.history] == [0, 1, 2] and wb.history[1]["blob"] == big
    path = next(pathlib.Path(wb.path).glob("*.wandb"))
    assert sum(1 for _ in iter_records(str(path))) > 5


def test_default_name_sweep_and_modes(monkeypatch):
    config = OmegaConf.to_container(cfg_for("experiment=mnist1d_cnn", "memory=fixed",
                                            "trainer.seed=3"), resolve=True)
    assert default_run_name(config) == "mnist1d_cnn-nested-fixed-s3"
    config = OmegaConf.to_container(cfg_for("optimizer=adam"), resolve=True)
    assert default_run_name(config) == "sklearn_digits_mlp-adam-s0"
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    assert WandbTracker().sweep_id == "abc"
    assert cfg_for().logger.sweep_id == "abc"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbTracker(mode="offline").mode == "disabled"
    with pytest.raises(ValueError, match="logger.mode='cloud'"):
        WandbTracker(mode="cloud")
    with pytest.raises(ValueError, match="logger.stats_every=-1"):
        WandbTracker(stats_every=-1)


def test_both_trackers_implement_the_tracker_protocol(monkeypatch):
    """A job calls every hook directly (``tracking.Tracker``); ``NullTracker``'s resume hooks
    do nothing, ``WandbTracker.continue_run`` takes the checkpoint's W&B run, if it names one.
    Preflight refuses a ``logger`` that is not a tracker, with one message."""
    from nested_research.tracking import NullTracker, Tracker
    from nested_research.train import ConfigError, validate

    null = NullTracker()
    assert isinstance(null, Tracker) and isinstance(WandbTracker(), Tracker)
    null.continue_run({"id": "abc", "dir": "/x"}, 7, [{"trainer/step": 7}])
    assert null.resume_info() is None and null.recent_rows() == [] and null.flush() is None
    monkeypatch.delenv("WANDB_DIR", raising=False)
    tracker = WandbTracker()
    tracker.continue_run(None, 7, [])
    assert (tracker.resume_id, tracker.start_step, tracker.replay_rows) == (None, None, None)
    tracker.continue_run({"id": "abc", "dir": "/x"}, 7, [{"trainer/step": 7}])
    assert (tracker.resume_id, tracker.start_step, tracker.dir) == ("abc", 7, "/x")
    assert tracker.replay_rows == [{"trainer/step": 7}]
    with pytest.raises(ConfigError, match=r"logger._target_='collections.OrderedDict' is not a "
                                          r"tracker"):
        validate(cfg_for("logger=none", "logger._target_=collections.OrderedDict",
                         "~logger.stats_every"))


def test_online_start_failure_falls_back_to_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    tracker = WandbTracker(mode="online", dir=str(tmp_path))
    real = tracker._init

    def init(wandb, mode, *args):
        if mode == "online":
            raise TimeoutError("no network")
        return real(wandb, mode, *args)

    monkeypatch.setattr(tracker, "_init", init)
    with pytest.warns(UserWarning, match="logging offline instead"):
        tracker.start({"a": 1}, str(tmp_path))
    tracker.finish({"x": 1.0})
    wb = the_run(tmp_path)
    assert wb.config["a"] == 1 and wb.summary["x"] == 1.0 and wb.exit_code == 0


def test_learning_rate_log_matches_schedule_step_by_step():
    from nested_research.optimizers.schedules import PerEpochSchedule

    for lr in (PerEpochSchedule(0.1, 7),
               keras.optimizers.schedules.CosineDecay(0.1, 50, warmup_target=0.2,
                                                      warmup_steps=5)):
        opt = NestedLearningOptimizer(learning_rate=lr)
        log = LearningRateLog(opt, block=16)
        got = [log(i) for i in range(40)]
        want = [float(keras.ops.convert_to_numpy(lr(i))) for i in range(40)]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    opt = NestedLearningOptimizer(learning_rate=0.05)
    assert LearningRateLog(opt)(123) == pytest.approx(0.05)


def test_heatmap_steps_are_capped():
    assert schedule_steps(8, cap=4) == list(range(8))
    assert schedule_steps(1000, cap=4) == [0, 1, 2, 3, 996, 997, 998, 999]


# ---------------------------------------------------------------- every optimizer's state, one scheme
def _reference_state(opt, names: dict) -> dict:
    """``{layer: {key: value}}`` in NumPy from the state tensors ``names`` picks per variable
    (role -> tensor or None); norms over the layer, ``second_rms = sqrt(mean v)``."""
    sums = {}
    for i, var in enumerate(opt.model_variables if isinstance(opt, StatefulOptimizer)
                            else opt._trainable_variables):
        layer = sums.setdefault(layer_of(var.path), {})
        for role, value in names(i, var).items():
            if value is None:
                continue
            x = np.asarray(value, np.float64)
            s, n = layer.get(role, (0.0, 0))
            layer[role] = (s + (x.sum() if role == "second" else (x ** 2).sum()), n + x.size)
    key = {"fast": "state/fast_norm", "medium": "state/medium_norm", "slow": "state/slow_norm",
           "second": "state/second_rms"}
    return {layer: {key[r]: float(np.sqrt(s / n if r == "second" else s))
                    for r, (s, n) in roles.items()} for layer, roles in sums.items()}


def _keras_names(opt):
    by_name = {v.name: v for v in opt.variables}
    prefix = lambda var: var.path.replace("/", "_")  # noqa: E731
    return lambda i, var: {"fast": by_name[prefix(var) + "_momentum"],
                           "second": by_name[prefix(var) + "_velocity"]}


STATE_CASES = {
    # optimizer, the state each role is, the roles every layer shows
    "adam": (lambda: keras.optimizers.Adam(0.01), _keras_names, {"fast", "second"}),
    "ademamix": (lambda: AdEMAMix(0.01, alpha=2.0),
                 lambda o: lambda i, v: {"fast": o.slots(i)["m1"], "slow": o.slots(i)["m2"],
                                         "second": o.slots(i)["nu"]},
                 {"fast", "slow", "second"}),
    "m3": (lambda: M3(0.01, frequency=2),
           lambda o: lambda i, v: {"fast": o.slots(i)["m1"], "slow": o.slots(i)["m2"],
                                   "second": o.slots(i)["v"]},
           {"fast", "slow", "second"}),
    "nested": (lambda: NestedLearningOptimizer(0.01, memory_blend_mode="fixed", max_interval=1),
               lambda o: lambda i, v: {"fast": o.slots(i)["short"],
                                       "medium": o.slots(i)["medium"],
                                       "slow": o.slots(i)["long"],
                                       "second": o.slots(i)["velocity"]},
               {"fast", "medium", "slow", "second"}),
}


class _StateProbe(keras.callbacks.Callback):
    def __init__(self, opt, names, every):
        super().__init__()
        self.opt, self.names, self.every, self.seen = opt, names, every, {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.opt.iterations.numpy())
        if step % self.every == 0:
            self.seen[step] = _reference_state(self.opt, self.names(self.opt))


@pytest.mark.parametrize("name", sorted(STATE_CASES))
def test_every_optimizer_logs_its_state_under_one_naming_scheme(tmp_path, name):
    make, names, roles = STATE_CASES[name]
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = rng.integers(0, 3, size=(96,)).astype("int32")
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="c")(h))
    opt = make()
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(True))
    tracker = WandbTracker(dir=str(tmp_path), stats_every=4, timing_every=0, log_every=1)
    tracker.start({"run": name}, str(tmp_path))
    probe = _StateProbe(opt, names, 4)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=tracker.callbacks(opt) + [probe])
    tracker.finish({"done": 1.0}, optimizer=opt)

    wb = the_run(tmp_path)
    rows = {r["trainer/step"]: r for r in layer_rows(wb)}
    assert sorted(rows) == sorted(probe.seen) == [4, 8, 12]
    keys = {"state/" + k for k in ("fast_norm", "medium_norm", "slow_norm", "second_rms")}
    for step, want in probe.seen.items():
        assert len(want) == 2  # the two layers
        for layer in want:
            got = {k.split("/", 2)[2] for k in rows[step]
                   if k.startswith(f"layers/{layer}/state/")}
            assert got == {k for k in keys if k.split("/")[1].split("_")[0] in roles}, got
            for key, value in want[layer].items():
                assert rows[step][f"layers/{layer}/{key}"] == pytest.approx(value, rel=1e-5), \
                    (step, layer, key)
                assert value > 0
    # the end-of-run table carries the same columns
    final = wb.table("layers/final")
    assert {k for k in final[0] if k.startswith("state/")} == \
        {k for k in keys if k.split("/")[1].split("_")[0] in roles}

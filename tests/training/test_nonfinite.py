"""Non-finite steps (guard.py): skipped for the whole model, counted, logged; K bad losses stop.

Faults are injected through ``faults.Poison`` (a per-sample factor: ``inf``/``nan`` makes the
gradient, or the loss, non-finite for that batch, on that sample's replica only) and
``faults.NanAt`` (NaN logits on chosen training steps, for runs through the entry point).
"""

import functools
import json
import os
import pathlib
import sys
import textwrap

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import early
from early import selected
from faults import Poison
from nested_research import NestedLearningOptimizer
from nested_research.training.checkpoint_files import list_checkpoints
from nested_research.training.checkpoint_files import load as load_checkpoint
from nested_research.training.guard import NonFiniteGuard, NonFiniteLossError
from nested_research.train import ConfigError, check_trainer, run
from nested_research.tracking.reader import read_run

from repo import ROOT
CONF = ROOT / "conf"
TESTS = ROOT / "tests" / "training"  # (the subprocess imports this module)
BATCH, N_BATCHES = 8, 8


# ---------------------------------------------------------------- a small poisoned model
def make_data(n_batches=N_BATCHES, batch=BATCH):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_batches * batch, 6)).astype("float32")
    y = rng.integers(0, 3, size=(n_batches * batch,)).astype("int32")
    p = np.ones((n_batches * batch, 1), "float32")
    return x, y, p


def build_model(target):
    """Dense a -> b -> c; ``grad``: poisons the gradient into ``a``, ``loss``: the logits.

    (A NaN activation before a ReLU is not a reliable loss fault: TensorFlow's fused
    MatMul+BiasAdd+Relu (oneDNN) maps NaN to 0 in graph mode, while the gradient stays NaN.)
    """
    x_in = keras.Input((6,), name="x")
    p_in = keras.Input((1,), name="p")
    h = keras.layers.Dense(8, activation="relu", name="a")(x_in)
    if target == "grad":
        h = Poison("grad", name="poison")([h, p_in])
    h = keras.layers.Dense(8, activation="relu", name="b")(h)
    out = keras.layers.Dense(3, name="c")(h)
    if target == "loss":
        out = Poison("loss", name="poison")([out, p_in])
    return keras.Model([x_in, p_in], out)


OPTIMIZERS = {
    # Intervals 3, 2, 1 with accumulation: slow layers' accumulators must not see the bad step.
    "nested": lambda: NestedLearningOptimizer(learning_rate=0.01, memory_blend_mode="attention",
                                              max_interval=3, stats_every=1),
    "nested_adaptive": lambda: NestedLearningOptimizer(learning_rate=0.01,
                                                       memory_blend_mode="adaptive",
                                                       max_interval=2),
    "nested_none": lambda: NestedLearningOptimizer(learning_rate=0.01, memory_blend_mode="none"),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.01),
    "nadam": lambda: keras.optimizers.Nadam(0.01),
    "sgd": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "lion": lambda: keras.optimizers.Lion(0.001),
}


def state(model):
    """Every weight and every optimizer variable (inner ones too under loss scaling), as numpy."""
    opt = model.optimizer
    out = {f"w:{v.path}": np.array(v.numpy()) for v in model.weights}
    out.update({f"o:{v.path}:{i}": np.array(v.numpy()) for i, v in enumerate(opt.variables)})
    return out


class Snapshots(keras.callbacks.Callback):
    """``state(model)`` before and after batch ``index`` (0-based), and the logs of every batch."""

    def __init__(self, indices, guard=None):
        super().__init__()
        self.indices, self.before, self.after, self.logs = set(indices), {}, {}, []
        self.guard, self.streaks = guard, []

    def on_train_batch_begin(self, batch, logs=None):
        if batch in self.indices:
            self.before[batch] = state(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs or {}))
        if self.guard is not None:
            self.streaks.append(self.guard.nonfinite_streak)
        if batch in self.indices:
            self.after[batch] = state(self.model)


def train(opt_name, target, p, x, y, bad=(), max_nonfinite_steps=20, callbacks=(),
          policy="float32", **compile_kw):
    keras.backend.clear_session()  # (also resets the dtype policy)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(1)
    model = build_model(target)
    opt = OPTIMIZERS[opt_name]()
    if isinstance(opt, NestedLearningOptimizer):
        opt.compute_depths_from_model(model)
    guard = NonFiniteGuard(max_nonfinite_steps).install(model)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(True),
                  metrics=["accuracy"], **compile_kw)
    snaps = Snapshots(bad, guard)
    hist = model.fit([x, p], y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                     callbacks=[snaps, *callbacks, guard])
    return model, guard, snaps, hist


def assert_same_state(a, b, exclude=()):
    assert a.keys() == b.keys()
    for key in a:
        if any(e in key for e in exclude):
            continue
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------- (a), (b): the bad step is skipped
@pytest.mark.parametrize("opt_name,target,value", [
    ("nested", "grad", np.inf), ("nested", "grad", np.nan), ("nested", "loss", np.nan),
    ("nested", "loss", np.inf), ("adam", "grad", np.inf), ("adam", "loss", np.nan)])
def test_bad_step_is_skipped_and_training_equals_a_run_without_the_batch(opt_name, target, value):
    x, y, p = make_data()
    bad = 3
    p[bad * BATCH + 5] = value  # one sample of batch 3
    model, guard, snaps, hist = train(opt_name, target, p, x, y, bad=[bad])

    # Nothing moved across the bad step: weights, memories, moments, accumulators, statistics,
    # per-variable counters and iterations, bitwise.
    assert_same_state(snaps.before[bad], snaps.after[bad])
    assert int(model.optimizer.iterations.numpy()) == N_BATCHES - 1
    assert guard.skipped_steps == 1
    assert [log["skipped_steps"] for log in snaps.logs] == [0, 0, 0, 1, 1, 1, 1, 1]
    # A loss fault is a non-finite loss (streak 1, reset by the next good step); a gradient
    # fault leaves the loss finite.
    assert snaps.streaks == ([0, 0, 0, 1, 0, 0, 0, 0] if target == "loss" else [0] * N_BATCHES)
    # The skipped step did not enter the running metrics.
    assert all(np.isfinite(log["loss"]) for log in snaps.logs)
    assert hist.history["skipped_steps"] == [1]

    # Training continues as if the batch had never been drawn.
    ref_skipped, ref_state, ref_history = _without_batch(opt_name, target, bad)
    assert ref_skipped == 0
    assert_same_state(state(model), ref_state)
    assert hist.history["loss"] == ref_history["loss"]
    assert hist.history["accuracy"] == ref_history["accuracy"]


#: (optimizer, fault target, left-out batch) -> the run without that batch: its guard's
#: skipped steps, ``state(model)`` and history.  The inf and the nan case of a target train
#: the same reference (``train`` starts from a fresh Keras session and seed every time).
_REFERENCES: dict = {}


def _without_batch(opt_name, target, bad):
    key = (opt_name, target, bad)
    if key not in _REFERENCES:
        x, y, _ = make_data()
        keep = np.r_[0:bad * BATCH, (bad + 1) * BATCH:N_BATCHES * BATCH]
        ref, ref_guard, _, ref_hist = train(opt_name, target, np.ones((len(keep), 1), "f4"),
                                            x[keep], y[keep])
        _REFERENCES[key] = (ref_guard.skipped_steps, state(ref), ref_hist.history)
    return _REFERENCES[key]


@pytest.mark.parametrize("opt_name", ["nested_adaptive", "nested_none", "adamw", "nadam", "sgd",
                                      "lion"])
def test_every_optimizer_skips_the_bad_step(opt_name):
    x, y, p = make_data()
    p[2 * BATCH] = np.nan     # gradient NaN at batch 2
    p[5 * BATCH + 7] = np.inf  # gradient inf at batch 5
    model, guard, snaps, _ = train(opt_name, "grad", p, x, y, bad=[2, 5])
    for i in (2, 5):
        assert_same_state(snaps.before[i], snaps.after[i])
    assert guard.skipped_steps == 2
    assert int(model.optimizer.iterations.numpy()) == N_BATCHES - 2
    # A good step does change things (the check above could not pass vacuously).
    before, after = snaps.after[2], snaps.before[5]
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("w:"))


@pytest.mark.parametrize("mode", [{"jit_compile": True}, {"run_eagerly": True}],
                         ids=["xla", "eager"])
def test_xla_and_eager_steps_skip_too(mode):
    x, y, p = make_data()
    p[3 * BATCH + 2] = np.inf
    p[6 * BATCH] = np.nan
    model, guard, snaps, _ = train("nested", "grad", p, x, y, bad=[3, 6], **mode)
    for i in (3, 6):
        assert_same_state(snaps.before[i], snaps.after[i])
    assert guard.skipped_steps == 2
    assert int(model.optimizer.iterations.numpy()) == N_BATCHES - 2


def test_loss_scale_optimizer_skip_halves_the_scale_only_for_overflows():
    x, y, p = make_data()
    p[3 * BATCH + 1] = np.inf  # scaled gradients overflow, loss finite: an overflow
    model, guard, snaps, _ = train("nested", "grad", p, x, y, bad=[3], policy="mixed_float16")
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    before, after = snaps.before[3], snaps.after[3]
    assert_same_state(before, after, exclude=("dynamic_scale", "step_counter"))
    scale = next(k for k in before if "dynamic_scale" in k)
    assert after[scale] == before[scale] / 2
    counter = next(k for k in before if "step_counter" in k)
    assert after[counter] == 0  # what LossScaleOptimizer does on an overflow
    assert guard.skipped_steps >= 1 and snaps.logs[3]["skipped_steps"] \
        == snaps.logs[2]["skipped_steps"] + 1

    x, y, p = make_data()
    p[3 * BATCH + 1] = np.nan  # a NaN loss: skipped, the scale is kept
    model, guard, snaps, _ = train("nested", "loss", p, x, y, bad=[3],
                                   policy="mixed_float16")
    before, after = snaps.before[3], snaps.after[3]
    assert_same_state(before, after)  # the scale and its step counter too
    assert snaps.streaks[3] == 1 and snaps.logs[3]["skipped_steps"] \
        == snaps.logs[2]["skipped_steps"] + 1


# ---------------------------------------------------------------- (c) K consecutive bad losses
def test_k_consecutive_nonfinite_losses_stop_fit_a_broken_streak_does_not():
    x, y, p = make_data()
    for i in (1, 2, 4, 5, 6):  # losses NaN at batches 1, 2 (streak 2), 4, 5, 6 (streak 3)
        p[i * BATCH] = np.nan
    seen = Snapshots([3])
    with pytest.raises(NonFiniteLossError) as err:
        train("nested", "loss", p, x, y, max_nonfinite_steps=3, callbacks=[seen])
    message = str(err.value)
    assert "3 consecutive steps (steps 5-7 of this fit, epoch 1)" in message
    assert "max_nonfinite_steps=3" in message and "5 steps skipped" in message
    assert len(seen.logs) == 7  # stopped at the 7th batch, the 3rd NaN in a row
    # The two good steps (batches 0 and 3) are all that reached the model.
    assert "2 updates applied" in message

    with pytest.raises(ValueError, match=r"max_nonfinite_steps=0 must be an integer >= 1"):
        NonFiniteGuard(0)
    with pytest.raises(ValueError, match=r"max_nonfinite_steps=True must be"):
        NonFiniteGuard(True)
    with pytest.raises(RuntimeError, match="install"):  # a guard not installed on the model
        model = build_model("grad")
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(True))
        model.fit([x, np.ones_like(p)], y, batch_size=BATCH, verbose=0,
                  callbacks=[NonFiniteGuard(3)])


@pytest.mark.parametrize("value", [0, -1, "many", True, 2.5])
def test_config_rejects_bad_max_nonfinite_steps(value):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config")
    assert cfg.trainer.max_nonfinite_steps == 20
    check_trainer(cfg.trainer)
    cfg.trainer.max_nonfinite_steps = value
    with pytest.raises(ConfigError) as err:
        check_trainer(cfg.trainer)
    assert str(err.value) == f"trainer.max_nonfinite_steps={value!r} must be an integer >= 1"


def _the_run(wandb_dir):
    runs = sorted(pathlib.Path(wandb_dir).glob("wandb/offline-run-*"))
    assert len(runs) == 1, runs
    return read_run(str(runs[0]))


def test_entry_point_counts_and_logs_skipped_steps(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model._target_=faults.build_nan_mlp", "+model.nan_steps=[3]", "trainer.max_steps=8",
            "trainer.verbose=0", "logger.log_every=1", "logger.stats_every=4",
            "logger.timing_every=0", f"logger.dir={tmp_path}"])
    run(cfg, str(tmp_path / "run"))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["skipped_steps"] == 1 and results["steps"] == 7
    assert results["metrics"]["train/skipped_steps"] == 1
    assert np.isfinite(results["metrics"]["train/loss"])
    wb = _the_run(tmp_path)
    assert wb.exit_code == 0
    rows = [r for r in wb.history if "train/loss" in r]
    assert [r["trainer/step"] for r in rows] == list(range(1, 9))
    assert [r["train/skipped_steps"] for r in rows] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert all(np.isfinite(r["train/loss"]) for r in rows)


@pytest.mark.parametrize("nan_steps", [[], [3]])
def test_progress_bar_shows_skipped_steps_only_once_a_step_was_skipped(nan_steps, tmp_path,
                                                                       data_dir, capsys):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model._target_=faults.build_nan_mlp", f"+model.nan_steps={nan_steps}",
            "optimizer=adam", "trainer.max_steps=8", "trainer.verbose=1", "logger=none"])
    run(cfg, str(tmp_path / "run"))
    bars = [line for line in capsys.readouterr().out.splitlines() if "━" in line]
    assert bars and "loss:" in bars[-1]
    assert "skipped_steps" not in bars[0]  # the first batch: nothing skipped yet
    if nan_steps:
        assert "skipped_steps: 1.0000" in bars[-1]
    else:
        assert not any("skipped_steps" in line for line in bars)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"]["train/skipped_steps"] == len(nan_steps)  # still in the history


def _cli_stops(tmp_path):
    """The command line with NaN logits from step 5 on (a subprocess: its exit status)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", WANDB_MODE="offline",
               NESTED_RESEARCH_OUTPUT_DIR=str(tmp_path / "out"),
               PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT / "tests"), str(ROOT),
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("WANDB_DIR", None)
    return functools.partial(
        early.run,
        [sys.executable, "-m", "nested_research.train", "model._target_=faults.build_nan_mlp",
         "+model.nan_from_step=5", "trainer.max_nonfinite_steps=3", "trainer.max_steps=30",
         "trainer.checkpoint_every=2", "trainer.verbose=0", "logger.log_every=1",
         "logger.timing_every=0",
         f"logger.dir={tmp_path / 'w'}"],
        env=env, cwd=ROOT, timeout=300)


def test_cli_stops_after_k_nonfinite_losses_and_marks_the_run_failed(subprocesses):
    tmp_path = subprocesses["cli_stops"]
    proc = subprocesses["runs"].result("cli_stops")
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "nested_research.train: error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "the loss was NaN or infinite for 3 consecutive steps (steps 5-7 of this fit" \
        in errors[0] and "max_nonfinite_steps=3" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out").rglob("results.json"))
    assert not list((tmp_path / "out").rglob("model.keras"))

    wb = _the_run(tmp_path / "w")
    assert wb.exit_code == 1
    assert wb.summary["failed"] is True
    assert wb.summary["error"].startswith("NonFiniteLossError: the loss was NaN or infinite")
    rows = [r for r in wb.history if "train/loss" in r]
    assert [r["trainer/step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["train/skipped_steps"] for r in rows] == [0, 0, 0, 0, 1, 2, 3]
    assert all(np.isfinite(r["train/loss"]) for r in rows)

    # Checkpoints every 2 steps (the newest 2 kept): 4, the last good step, and 6, inside the
    # streak, which holds the same weights and optimizer state since steps 5 and 6 were
    # skipped; nothing for step 7 and no end-of-run checkpoint.
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    assert [step for step, _ in list_checkpoints(str(run_dir))] == [6, 4]
    newest, good = (load_checkpoint(path).arrays() for _, path in list_checkpoints(str(run_dir)))
    for group in ("model", "optimizer"):
        floats = [(a, b) for a, b in zip(newest[group], good[group]) if a.dtype.kind == "f"]
        assert floats
        for a, b in floats:
            assert np.all(np.isfinite(a))
            np.testing.assert_array_equal(a, b)
    assert [int(a) for a in newest["extra"]] == [2, 2]  # skipped steps, non-finite streak
    assert [int(a) for a in good["extra"]] == [0, 0]


# ---------------------------------------------------------------- (d) two replicas
MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    import test_nonfinite as t
    from nested_research import NestedLearningOptimizer
    from nested_research.training.guard import NonFiniteGuard

    B, N = 16, 8   # global batch 16: 8 samples per replica
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N * B, 6)).astype("float32")
    y = rng.integers(0, 3, size=(N * B,)).astype("int32")

    def fit(p, x, y, bad, guarded=True):
        keras.backend.clear_session()
        keras.utils.set_random_seed(1)
        strategy = tf.distribute.MirroredStrategy()
        with strategy.scope():
            model = t.build_model("grad")
            opt = NestedLearningOptimizer(learning_rate=0.01, memory_blend_mode="attention",
                                          max_interval=3)
            opt.compute_depths_from_model(model)
            guard = NonFiniteGuard(5).install(model) if guarded else None
            model.compile(opt, keras.losses.SparseCategoricalCrossentropy(True))
            snaps = t.Snapshots(bad)
            model.fit([x, p], y, batch_size=B, epochs=1, shuffle=False, verbose=0,
                      callbacks=[snaps] + ([guard] if guarded else []))
        if not guarded:
            return None
        unchanged = all(all(np.array_equal(snaps.before[i][k], snaps.after[i][k])
                            for k in snaps.before[i]) for i in bad)
        return {"replicas": strategy.num_replicas_in_sync, "skipped": guard.skipped_steps,
                "iterations": int(model.optimizer.iterations.numpy()), "unchanged": unchanged,
                "logs": [l["skipped_steps"] for l in snaps.logs],
                "state": {k: v.tolist() for k, v in t.state(model).items()}}

    p = np.ones((N * B, 1), "float32")
    # A plain run first: guarded steps after another strategy's collectives once got their
    # collective instance keys out of order between the devices.
    fit(p, x, y, [], guarded=False)
    p[2 * B + 12] = np.inf  # batch 2: a sample of the second replica, gradient inf
    p[5 * B + 3] = np.nan   # batch 5: a sample of the first replica
    bad = fit(p, x, y, [2, 5])
    keep = np.r_[0:2 * B, 3 * B:5 * B, 6 * B:N * B]
    ref = fit(np.ones((len(keep), 1), "float32"), x[keep], y[keep], [])
    json.dump({"bad": bad, "ref": ref}, open(sys.argv[1], "w"))
""")


def _mirrored(tmp_path):
    """MIRRORED in a subprocess (logical devices are process-wide), writing ``mirrored.json``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT / "tests"), str(ROOT),
                                           os.environ.get("PYTHONPATH", "")]))
    return functools.partial(
        early.run, [sys.executable, "-c", MIRRORED, str(tmp_path / "mirrored.json")],
        env=env, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module", autouse=True)
def subprocesses(request, tmp_path_factory, digits_prepared):
    """The two subprocess tests' processes, one after the other in a thread from the module's
    first test on (tests/early.py), with the environment of that moment; their tests come
    last.  ``{"cli_stops": dir, "mirrored": dir, "runs": Early}``."""
    found, jobs = {}, {}
    for name, test, command in [
            ("cli_stops", "test_cli_stops_after_k_nonfinite_losses_and_marks_the_run_failed",
             _cli_stops),
            ("mirrored", "test_mirrored_replicas_skip_together", _mirrored)]:
        if selected(request, test):
            found[name] = tmp_path_factory.mktemp(name)
            jobs[name] = command(found[name])
    found["runs"] = early.Early(jobs)
    yield found
    found["runs"].close()


def test_mirrored_replicas_skip_together(subprocesses):
    out = subprocesses["mirrored"] / "mirrored.json"
    proc = subprocesses["runs"].result("mirrored")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    bad, ref = got["bad"], got["ref"]
    assert bad["replicas"] == 2
    assert bad["unchanged"] and bad["skipped"] == 2 and ref["skipped"] == 0
    assert bad["iterations"] == ref["iterations"] == 6
    assert bad["logs"] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert bad["state"].keys() == ref["state"].keys()
    for key in bad["state"]:
        np.testing.assert_allclose(np.array(bad["state"][key], dtype=np.float64),
                                   np.array(ref["state"][key], dtype=np.float64),
                                   rtol=1e-6, atol=1e-7, err_msg=key)

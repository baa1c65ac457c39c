"""Checkpoints and resume (``nested_research/training/checkpoint_files.py``, ``trainer.resume``).

The end-to-end check runs ``python -m nested_research.train`` three times (digits MLP with
dropout, W&B offline, ``trainer.deterministic=true``, 3 epochs of 21 batches, a checkpoint every
8 batches): once uninterrupted, once SIGKILLed after batch 45 (test hook
``NESTED_RESEARCH_KILL_AT_STEP``; newest checkpoint: batch 40, in the middle of epoch 2), and
once resuming that run.  Everything the two finished runs wrote must be equal: results,
progress rows, final weights, the final checkpoint's optimizer state, and the W&B history read
back from the offline ``.wandb`` files (each ``trainer/step`` exactly once across the two files
of the resumed run).  The three runs start with the session's first test and go on beside the
other tests (tests/early.py).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from nested_research import NestedLearningOptimizer
from nested_research.training import checkpoint_files as ckpt_mod
from nested_research.training.checkpoint_files import latest, list_checkpoints
from nested_research.training.checkpoint_callback import Checkpointer
from nested_research.models import build_mlp
from nested_research.training.resume import Resume
from nested_research.train import ConfigError, run
from nested_research.tracking.reader import read_run

import early
from conftest import prepare_digits
from inprocess import cli_in_process

from repo import ROOT
CONF = ROOT / "conf"
EPOCHS, BATCH, EVERY, KILL_AT = 3, 64, 8, 45
STEPS_PER_EPOCH = 21  # 1293 training examples (1437 less 10 % validation) in batches of 64
TOTAL = EPOCHS * STEPS_PER_EPOCH
COMMON = [f"trainer.epochs={EPOCHS}", f"trainer.batch_size={BATCH}",
          "trainer.deterministic=true", "trainer.verbose=0", f"trainer.checkpoint_every={EVERY}",
          "model.dropout=0.1", "logger.log_every=1", "logger.stats_every=4",
          "logger.timing_every=0"]


def _env(out, **extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", WANDB_MODE="offline", WANDB_SILENT="true",
               NESTED_RESEARCH_OUTPUT_DIR=str(out), **extra)
    # WANDB_SERVICE: an in-process W&B test earlier in the session leaves this process's W&B
    # service in the environment; a child that used it would leave its run id "in use" there
    # when killed.  Each run owns its service, as from a shell.
    for key in ("WANDB_DIR", "WANDB_SWEEP_ID", "WANDB_RUN_GROUP", "WANDB_SERVICE",
                ckpt_mod.KILL_ENV):
        if key not in extra:
            env.pop(key, None)
    return env


def _train(*args, env):
    return early.popen([sys.executable, "-m", "nested_research.train", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=env, cwd=ROOT)


def _wait(proc, timeout=600):
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def _wandb_runs(out) -> list:
    return sorted(pathlib.Path(out).glob("wandb/offline-run-*"))


def _settle(paths, quiet=1.0, timeout=30.0):
    """Wait until the files stop growing (the killed run's W&B service writing its last rows)."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        sizes = [p.stat().st_size for p in paths]
        if sizes != last:
            last, since = sizes, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


def _tree(path) -> dict:
    """Every file and folder under ``path`` with its size and mtime (ns)."""
    out = {}
    for p in sorted(pathlib.Path(path).rglob("*")):
        st = p.stat()
        out[str(p.relative_to(path))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def session_jobs(request, tmp_path_factory, data_dir):
    """The three command-line runs (uninterrupted, killed, resumed), started with the session
    (tests/early.py, conftest's ``early_session``) when a test reads ``runs``; their
    environments are taken now."""
    module = sys.modules[__name__]
    if not any(getattr(item, "module", None) is module and "runs" in item.fixturenames
               for item in request.session.items):
        return {}
    prepare_digits(data_dir)  # before any run starts
    base = tmp_path_factory.mktemp("resume")
    envs = {"a": _env(base / "out_a"), "r": _env(base / "out_b"),
            "b": _env(base / "out_b", **{ckpt_mod.KILL_ENV: str(KILL_AT)})}
    return {"resume_runs": functools.partial(_resume_runs, base, envs)}


def _resume_runs(base, envs):
    out_a, out_b = base / "out_a", base / "out_b"
    dir_a, dir_b = out_a / "runs" / "a", out_b / "runs" / "b"
    proc_a = _train(*COMMON, f"hydra.run.dir={dir_a}", env=envs["a"])
    try:
        proc_b = _train(*COMMON, f"hydra.run.dir={dir_b}", env=envs["b"])
        code_b, _, err_b = _wait(proc_b)
        assert code_b == -signal.SIGKILL, (code_b, err_b[-3000:])
        _settle(list((out_b / "wandb").rglob("*.wandb")))
        killed = base / "killed_copy"  # the interrupted run as it was, for the refusal tests
        shutil.copytree(dir_b, killed)
        killed_state = {
            "checkpoints": [(s, os.path.basename(p)) for s, p in list_checkpoints(str(dir_b))],
            "tmp": [n for n in os.listdir(dir_b / "checkpoints") if n.startswith(".tmp")],
            "progress": (dir_b / "progress.jsonl").read_text().splitlines(),
            "results": (dir_b / "results.json").exists(),
        }
        # The resumed run starts while the uninterrupted one still finishes (both own their
        # output and W&B directories).
        started = time.perf_counter()
        proc_r = _train(*COMMON, f"trainer.resume={dir_b}",
                        f"hydra.run.dir={base / 'resume_job'}", env=envs["r"])
        code_r, out_r, err_r = _wait(proc_r)
        resume_seconds = time.perf_counter() - started
        code_a, _, err_a = _wait(proc_a)
    finally:
        if proc_a.poll() is None:  # a failed assertion above: no run left behind
            proc_a.kill()
            proc_a.wait()
    assert code_a == 0, err_a[-3000:]
    assert code_r == 0, err_r[-3000:]
    return {"a": dir_a, "b": dir_b, "out_a": out_a, "out_b": out_b, "killed": killed,
            "killed_state": killed_state, "resume_stdout": out_r,
            "resume_seconds": resume_seconds, "base": base}


@pytest.fixture(scope="module")
def runs(early_session):
    return early_session.result("resume_runs")


def _results(run_dir):
    return json.loads((pathlib.Path(run_dir) / "results.json").read_text())


def test_killed_run_left_complete_checkpoints_mid_epoch(runs):
    state = runs["killed_state"]
    assert not state["results"]
    # checkpoint_every=8, keep 2: batches 32 and 40; 40 is batch 19 of epoch 2.
    assert [s for s, _ in state["checkpoints"]] == [40, 32]
    assert state["tmp"] == []
    ck = latest(str(runs["killed"]))
    assert (ck.step, ck.epoch, ck.position) == (40, 1, 40 - STEPS_PER_EPOCH)
    assert ck.meta["steps_per_epoch"] == STEPS_PER_EPOCH
    assert ck.meta["wandb"]["id"]
    assert len(ck.meta["history"]["val/loss"]) == 1  # one finished epoch
    assert ck.meta["variables"]["metrics"]  # the running epoch means, taken mid-epoch
    assert len(ck.meta["variables"]["optimizer"]) > len(ck.meta["variables"]["model"])
    steps = [r["trainer/step"] for r in ck.rows() if "trainer/epoch" not in r]
    assert steps == list(range(1, 41))  # the W&B rows logged up to the checkpoint
    # The killed run had written epoch 2's progress row (batch 42) after that checkpoint.
    assert [json.loads(r)["epoch"] for r in state["progress"]] == [1, 2]
    assert "resuming" in runs["resume_stdout"] and "step 40" in runs["resume_stdout"]


def test_resumed_run_equals_uninterrupted_run(runs):
    a, b = _results(runs["a"]), _results(runs["b"])
    assert a["steps"] == b["steps"] == TOTAL and a["epochs"] == b["epochs"] == EPOCHS
    assert b["metrics"] == a["metrics"]  # test/val/train loss and accuracy, bitwise
    assert b["history"] == a["history"]
    for key in ("test/accuracy", "test/loss", "val/accuracy", "val/loss"):
        assert np.isfinite(b["metrics"][key])
    rows = lambda d: [json.loads(r) for r in (d / "progress.jsonl").read_text().splitlines()]
    assert rows(runs["b"]) == rows(runs["a"])
    assert [r["epoch"] for r in rows(runs["b"])] == [1, 2, 3]

    wa = keras.models.load_model(runs["a"] / "model.keras").get_weights()
    wb = keras.models.load_model(runs["b"] / "model.keras").get_weights()
    assert len(wa) == len(wb) > 0
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)
    # The end-of-fit checkpoints: every model, optimizer and guard variable, bitwise.
    ca, cb = latest(str(runs["a"])), latest(str(runs["b"]))
    assert ca.step == cb.step == TOTAL and (ca.epoch, ca.position) == (EPOCHS, 0)
    for group in ("model", "optimizer", "extra"):
        xa, xb = ca.arrays()[group], cb.arrays()[group]
        assert len(xa) == len(xb) > 0, group
        for x, y in zip(xa, xb):
            np.testing.assert_array_equal(x, y)
    assert [s for s, _ in list_checkpoints(str(runs["b"]))] == [TOTAL, 56]


def _no_internal(row):
    return {k: v for k, v in row.items() if not k.startswith(("_", "timing/"))}


def test_resumed_wandb_run_has_every_step_once(runs):
    (path_a,) = _wandb_runs(runs["out_a"])
    parts = _wandb_runs(runs["out_b"])
    assert len(parts) == 2  # the killed process's files and the resumed process's
    first, second = (read_run(str(p)) for p in parts)
    whole_a = read_run(str(path_a))
    assert first.run_id == second.run_id and first.run_id != whole_a.run_id
    assert first.exit_code is None and second.exit_code == 0 and whole_a.exit_code == 0
    # W&B writes asynchronously: the killed process's file may lack its last rows, also rows
    # before the checkpoint; the resumed run logs those from the checkpoint's rows.json.
    lost = 40 - max(r["trainer/step"] for r in first.history if "train/loss" in r)
    print(f"killed run's W&B file ends {lost} steps before the checkpoint (negative: after)")

    def step_rows(run):
        return [r for r in run.history if "train/loss" in r]

    def epoch_rows(run):
        return [r for r in run.history if "trainer/epoch" in r]

    steps = [r["trainer/step"] for r in step_rows(first) + step_rows(second)]
    assert sorted(steps) == list(range(1, TOTAL + 1))  # none missing, none twice
    epochs = [r["trainer/epoch"] for r in epoch_rows(first) + epoch_rows(second)]
    assert sorted(epochs) == [1, 2, 3]
    # ... with the values of the uninterrupted run (loss, accuracy, lr, per-layer statistics).
    by_step = {r["trainer/step"]: _no_internal(r) for r in step_rows(whole_a)}
    for row in step_rows(first) + step_rows(second):
        assert _no_internal(row) == by_step[row["trainer/step"]], row["trainer/step"]
    by_epoch = {r["trainer/epoch"]: _no_internal(r) for r in epoch_rows(whole_a)}
    for row in epoch_rows(first) + epoch_rows(second):
        assert _no_internal(row) == by_epoch[row["trainer/epoch"]]
    assert second.table("schedule/lr") == whole_a.table("schedule/lr")  # steps 1..63
    assert second.summary["trainer/steps"] == TOTAL
    assert second.summary["test/accuracy"] == whole_a.summary["test/accuracy"]


# ---------------------------------------------------------------- refusals: nothing touched
def test_checkpoint_of_another_model_is_refused_cli(runs, tmp_path, monkeypatch, capsys):
    """model=cnn on a digits-MLP checkpoint: one error line, exit 2, nothing written anywhere.

    The command line in this process (tests/inprocess.py), in ``_train``'s environment."""
    before = _tree(runs["killed"])
    out = tmp_path / "out"
    for key in os.environ.keys() - _env(out).keys():
        monkeypatch.delenv(key)
    for key, value in _env(out).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)
    proc = cli_in_process(monkeypatch, capsys, *COMMON, "model=cnn",
                          f"trainer.resume={runs['killed']}")
    code, err = proc.returncode, proc.stderr
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("nested_research.train:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    line = lines[0]
    assert line.startswith("nested_research.train: error: trainer.resume=")
    ck = latest(str(runs["killed"]))
    assert ck.path in line and "a different model" in line
    assert "model._target_" in line and "build_mlp" in line and "build_cnn" in line
    assert _tree(runs["killed"]) == before
    assert not out.exists()  # not even Hydra's run directory or a wandb/ folder


def test_checkpoint_of_other_hidden_sizes_is_refused(runs, digits_prepared):
    before = _tree(runs["killed"])
    cfg = _cfg(*COMMON, "model.hidden_units=[32]",
               f"trainer.resume={runs['killed']}")
    with pytest.raises(ConfigError) as err:
        run(cfg, str(runs["base"] / "unused"))
    msg = str(err.value)
    assert "model.hidden_units is [128, 128, 64] there, [32] here" in msg
    assert latest(str(runs["killed"])).path in msg
    assert _tree(runs["killed"]) == before
    assert not (runs["base"] / "unused").exists()


def test_config_diff_lets_where_and_how_data_is_read_differ():
    """A resumed run may read its data from elsewhere and with tf.data's autotuner switched
    (the same batches); a change of the data itself is a difference."""
    from nested_research.training.resume import config_diff

    saved = {"data": {"name": "digits", "data_dir": "/a"}, "model": {"hidden_units": [8]}}
    current = {"data": {"name": "digits", "data_dir": "/b", "autotune": True},
               "model": {"hidden_units": [8]}}
    assert config_diff(saved, current) == []
    current["data"]["name"] = "mnist1d"
    assert config_diff(saved, current) == [("data.name", "digits", "mnist1d")]


def test_a_run_resumes_under_other_versions(tmp_path, digits_prepared, monkeypatch):
    """The versions a run records (results.json, the W&B config) are not part of the config its
    checkpoints keep, so a run resumes after an upgrade; it then records the new versions."""
    from nested_research.training import job

    run_dir = tmp_path / "run"
    args = ("logger=none", "trainer.epochs=1", "trainer.batch_size=256",
            "trainer.checkpoint_every=2", "trainer.verbose=0")
    run(_cfg(*args), str(run_dir))
    before = _results(run_dir)["config"]["versions"]
    assert before and "versions" not in latest(str(run_dir)).meta["config"]
    (run_dir / "results.json").unlink()  # as if stopped after its last checkpoint
    upgraded = dict(before, keras="99.0.0", nested_research="9.9.9", git_commit="0" * 40)
    monkeypatch.setattr(job, "versions", lambda: upgraded)
    run(_cfg(*args, f"trainer.resume={run_dir}"), str(tmp_path / "unused"))
    assert _results(run_dir)["config"]["versions"] == upgraded


def test_resume_of_missing_or_empty_dir_is_a_clear_error(tmp_path, digits_prepared):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"trainer.resume='.*nope': no such directory"):
        run(_cfg("logger=none", f"trainer.resume={missing}"), str(tmp_path / "x"))
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "progress.jsonl").write_text('{"epoch": 1}\n')
    before = _tree(empty)
    with pytest.raises(ConfigError, match=r"no complete checkpoint in .*checkpoints \(none\)"):
        run(_cfg("logger=none", f"trainer.resume={empty}"), str(tmp_path / "x"))
    assert _tree(empty) == before
    assert not missing.exists() and not (tmp_path / "x").exists()


def test_resume_of_a_finished_run_is_refused(runs, digits_prepared):
    with pytest.raises(ConfigError, match="already finished"):
        run(_cfg(*COMMON, f"trainer.resume={runs['a']}"), str(runs["base"] / "unused2"))


@pytest.mark.parametrize("override,needle", [
    ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1 must be an integer >= 0"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints=0 must be an integer >= 1"),
    ("trainer.resume=''", "trainer.resume='' must be the path of a run directory"),
])
def test_bad_checkpoint_settings(override, needle, tmp_path):
    from nested_research.train import validate

    with pytest.raises(ConfigError) as err:
        validate(_cfg(override))
    assert needle in str(err.value)


def _cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# ---------------------------------------------------------------- atomic writes, in-process
def _small(seed=0):
    keras.utils.set_random_seed(seed)
    model = build_mlp((8, 8, 1), 10, hidden_units=[16, 8], dropout=0.2)
    opt = NestedLearningOptimizer(learning_rate=0.01, memory_blend_mode="adaptive",
                                  max_interval=3, accumulate_gradients=True, stats_every=2)
    opt.compute_depths_from_model(model)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model, opt


def _batches(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n * 8, 8, 8, 1)).astype("float32"), rng.integers(0, 10, n * 8)


def _state(model):
    return [v.numpy().copy() for v in list(model.variables) + list(model.optimizer.variables)]


class _Bundle:  # what Resume.restore needs from a DataBundle
    def __init__(self, x, y):
        import tensorflow as tf

        self.val = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        self.test = self.val


def _fitted_saver(tmp_path, n_batches, seed):
    """A small model fitted one epoch on ``n_batches`` batches, and a Checkpointer at its end."""
    x, y = _batches(n_batches, seed)
    model, _ = _small()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    saver = Checkpointer(str(tmp_path), every=0, steps_per_epoch=n_batches)
    saver.set_model(model)
    saver.step = n_batches
    return model, saver, x, y


def test_restore_brings_back_every_variable_and_training_continues_identically(tmp_path):
    model, saver, x, y = _fitted_saver(tmp_path, 5, 1)
    saver.save(1, 0)
    kinds = {spec["path"].rsplit("/", 1)[-1].split("_")[-1]
             for spec in latest(str(tmp_path)).meta["variables"]["optimizer"]}
    assert {"iteration", "accumulator", "logits", "updates", "stats"} <= kinds, kinds
    x2, y2 = _batches(4, 2)
    model.fit(x2, y2, batch_size=8, epochs=1, shuffle=False, verbose=0)
    want = _state(model)

    keras.backend.clear_session()
    fresh, _ = _small(seed=7)  # other initial weights
    Resume(latest(str(tmp_path))).restore(fresh, _Bundle(x, y))
    fresh.fit(x2, y2, batch_size=8, epochs=1, shuffle=False, verbose=0)
    got = _state(fresh)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_crash_during_a_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, saver, x, y = _fitted_saver(tmp_path, 3, 3)
    first = saver.save(1, 0)
    saved = _state(model)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    real = ckpt_mod._write_file
    calls = []

    def dies_halfway(path, chunks):  # writes half of state.bin, then the disk "fails"
        data = b"".join(bytes(memoryview(c).cast("B")) for c in chunks)
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
        calls.append(path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "_write_file", dies_halfway)
    saver.step = 6
    with pytest.raises(OSError, match="No space left"):
        saver.save(2, 0)
    assert calls and calls[0].endswith("state.bin")
    monkeypatch.setattr(ckpt_mod, "_write_file", real)
    assert os.listdir(tmp_path / "checkpoints") == [os.path.basename(first)]
    ck = latest(str(tmp_path))
    assert ck.path == first
    for a, b in zip(ck.arrays()["model"] + ck.arrays()["optimizer"], saved):
        np.testing.assert_array_equal(a, b)

    # A writer killed mid-write leaves its temporary folder: ignored, removed by the next save.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "checkpoints" / f".tmp-ckpt-000000009-{dead.pid}"
    stale.mkdir()
    (stale / "state.bin").write_bytes(b"\0" * 10)
    assert latest(str(tmp_path)).path == first
    saver.step = 9
    newest = saver.save(3, 0)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == sorted(
        [os.path.basename(first), os.path.basename(newest)])

    # A damaged newest checkpoint: loading falls back to the previous one, with a warning.
    with open(os.path.join(newest, "state.bin"), "r+b") as fh:
        fh.seek(5)
        byte = fh.read(1)
        fh.seek(5)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(UserWarning, match="SHA-256"):
        assert latest(str(tmp_path)).path == first


def test_keep_prunes_old_checkpoints(tmp_path):
    model, _ = _small()
    x, y = _batches(1, 4)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    saver = Checkpointer(str(tmp_path), every=0, steps_per_epoch=10, keep=2)
    saver.set_model(model)
    for step in (1, 2, 3, 4):
        saver.step = step
        saver.save(0, step)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [4, 3]


def test_row_journal_drops_rows_the_run_has_and_keeps_the_newest():
    from nested_research.tracking.rows import RowJournal

    logged = []
    journal = RowJournal(logged.append, max_step=5, max_epoch=1, keep=3)
    for step in range(1, 9):
        journal({"trainer/step": step, "train/loss": 1.0 / step})
    journal({"trainer/epoch": 1, "trainer/step": 8, "val/loss": 0.5})
    journal({"trainer/epoch": 2, "trainer/step": 9, "val/loss": 0.4})
    assert [r.get("trainer/epoch", r["trainer/step"]) for r in logged] == [6, 7, 8, 2]
    assert journal.dropped == 6
    assert [r["trainer/step"] for r in journal.rows] == [7, 8, 9]

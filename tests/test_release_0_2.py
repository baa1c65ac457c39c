"""What release 0.2 saved still loads: its ``.keras`` files with plain ``keras.saving.load_model``
after ``import nested_research`` (compiled and not), and its training checkpoints resume.

The fixtures in ``tests/fixtures/release_0_2/`` were written by release 0.2.0
(``make_fixtures.py`` there says how): a model of each builder compiled with a family
optimizer and trained three steps, its predictions and optimizer variables beside it; a finished
command-line run; and the same run killed after batch 25 (checkpoints at batches 10 and 20).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import nested_research  # noqa: F401  (registers the classes: the subject of these tests)
from inprocess import cli_in_process
from repo import FIXTURES

RELEASE = FIXTURES / "release_0_2"
MODELS = ["mlp_nested", "cnn_ademamix", "transformer_m3", "mlp_delta_momentum"]


@pytest.mark.parametrize("name", MODELS)
def test_keras_files_load_with_their_optimizer_state(name):
    saved = np.load(RELEASE / f"{name}.npz")
    model = keras.saving.load_model(RELEASE / f"{name}.keras")
    np.testing.assert_array_equal(model.predict(saved["x"], verbose=0), saved["predictions"])
    variables = model.optimizer.variables
    assert len(variables) == len([k for k in saved.files if k.startswith("opt_")])
    for i, v in enumerate(variables):
        np.testing.assert_array_equal(np.asarray(v), saved[f"opt_{i}"], err_msg=v.path)
    assert type(model.optimizer).__module__.startswith("nested_research.optimizers")


@pytest.mark.parametrize("name", MODELS)
def test_keras_files_load_uncompiled(name):
    saved = np.load(RELEASE / f"{name}.npz")
    model = keras.saving.load_model(RELEASE / f"{name}.keras", compile=False)
    assert getattr(model, "optimizer", None) is None  # (Keras sets none without compile)
    np.testing.assert_array_equal(model.predict(saved["x"], verbose=0), saved["predictions"])


def test_a_runs_model_loads_in_a_fresh_process_after_import_nested_research():
    """As a user meets it: a new interpreter, ``import nested_research``, then plain
    Keras (no ``custom_objects``)."""
    code = ("import nested_research, keras, sys; "
            "m = keras.saving.load_model(sys.argv[1]); "
            "print(type(m.optimizer).__name__, type(m.optimizer._learning_rate).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(RELEASE / "run_finished" / "model.keras")],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["NestedLearningOptimizer", "PerEpochSchedule"]


def test_a_killed_runs_checkpoint_resumes_to_the_finished_runs_result(tmp_path, monkeypatch,
                                                                     capsys, data_dir):
    """Resuming release 0.2's killed run (newest checkpoint: batch 20 of 42) finishes with the
    metrics its uninterrupted twin reached (deterministic mode, same config)."""
    spec = importlib.util.spec_from_file_location("make_fixtures", RELEASE / "make_fixtures.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)  # (its RUN_ARGS: the command line of the fixture's run)
    run = tmp_path / "run_killed"
    shutil.copytree(RELEASE / "run_killed", run)
    done = cli_in_process(monkeypatch, capsys, *make.RUN_ARGS, f"trainer.resume={run}",
                          f"paths.output_dir={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout and "step 20" in done.stdout
    got = json.loads((run / "results.json").read_text())
    want = json.loads((RELEASE / "run_finished" / "results.json").read_text())
    assert got["steps"] == want["steps"] == 42  # 2 epochs of 21 batches
    assert got["metrics"] == want["metrics"]
    assert got["history"] == want["history"]

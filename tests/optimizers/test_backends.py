"""Every family optimizer gives the same result on JAX as on TensorFlow (``backend_cases.py``).

Each backend runs all the cases in one subprocess (``KERAS_BACKEND`` picks the backend before
Keras is imported), both started together with the module: 30 steps of ``optimizer.apply`` on
the same gradients, eagerly and compiled (TensorFlow: ``tf.function(jit_compile=True)``; JAX:
``jax.jit`` of ``stateless_apply``, as Keras' JAX trainer runs it), compared within 1e-5
relative (to each array's largest value); and a tiny MLP trained in a compiled ``model.fit``.
What does not work on JAX yet is marked ``xfail(strict=True)`` with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backend_cases  # (beside this module: pytest puts its folder on the path)

pytest.importorskip("jax")

SCRIPT = Path(__file__).parent / "backend_cases.py"
BACKENDS = ("tensorflow", "jax")
RTOL = 1e-5

#: ``{case: reason}``: what does not run on JAX yet.
NOT_ON_JAX: dict = {}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """``{backend: (out dir, results.json)}``, both processes run side by side."""
    procs = {}
    for backend in BACKENDS:
        out = tmp_path_factory.mktemp(backend)
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
               "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
        procs[backend] = (out, subprocess.Popen(
            [sys.executable, str(SCRIPT), str(out)], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    done = {}
    for backend, (out, proc) in procs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{backend}:\n{log[-4000:]}"
        done[backend] = (out, json.loads((out / "results.json").read_text()))
    return done


def _params(suffixes):
    out = []
    for case in backend_cases.CASES if suffixes != ("fit",) else backend_cases.FIT:
        for suffix in suffixes:
            marks = [pytest.mark.xfail(strict=True, reason=NOT_ON_JAX[case])] \
                if case in NOT_ON_JAX else []
            out.append(pytest.param(case, suffix, marks=marks, id=f"{case}-{suffix}"))
    return out


def _outcome(results, backend, key):
    value = results[backend][1][key]
    assert value == "ok" or isinstance(value, list), f"{backend} {key}: {value}"
    return value


@pytest.mark.parametrize("case,mode", _params(backend_cases.MODES))
def test_same_result_on_jax_as_on_tensorflow(results, case, mode):
    key = f"{case}-{mode}"
    _outcome(results, "tensorflow", key)
    _outcome(results, "jax", key)
    tf_arrays = np.load(results["tensorflow"][0] / f"{key}.npz")
    jax_arrays = np.load(results["jax"][0] / f"{key}.npz")
    assert sorted(tf_arrays.files) == sorted(jax_arrays.files)
    for name in tf_arrays.files:
        expected, actual = tf_arrays[name].astype("float64"), jax_arrays[name].astype("float64")
        scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale,
                                   err_msg=f"{key}: {name}")
    if case.endswith("_skip"):  # the two non-finite steps were skipped on both
        skipped = [n for n in jax_arrays.files if n.endswith("skipped_steps")]
        assert skipped and int(jax_arrays[skipped[0]]) == len(backend_cases.NONFINITE_STEPS)


@pytest.mark.parametrize("case,mode", _params(("fit",)))
def test_trains_in_a_compiled_fit_on_jax(results, case, mode):
    losses = _outcome(results, "jax", f"{case}-fit")
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses

"""MirroredStrategy on two logical CPU devices equals one device; deterministic runs are bitwise equal.

Both run in a subprocess: logical devices and op determinism are process-wide TensorFlow settings.
It starts with the session's first test and runs beside the other tests (tests/early.py).
"""

import functools
import json
import os
import pathlib
import sys
import textwrap

import early
from early import selected

from repo import ROOT

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from nested_research import NestedLearningOptimizer
    from nested_research.models import build_mlp
    from nested_research.studies.runner import compose
    from nested_research.train import run

    out = sys.argv[1]
    result = {}
    # 1. The optimizer under MirroredStrategy (2 replicas) == one device, same global batches.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 256)
    for mode in ("attention", "adaptive"):
        weights = []
        for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy()):
            keras.backend.clear_session()
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = build_mlp((8, 8, 1), 10)
                opt = NestedLearningOptimizer(memory_blend_mode=mode, max_interval=3,
                                              steps_per_epoch=8)
                opt.compute_depths_from_model(model)
                model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
            weights.append([w.tolist() for w in model.get_weights()])
            result["replicas"] = strategy.num_replicas_in_sync
            result[f"intervals_{mode}"] = sorted(set(opt.intervals.values()))
        result[mode] = weights
    # 2. skip_nonfinite: a NaN in one replica's half of a batch skips the step on both replicas.
    x_bad = x.copy()
    x_bad[3 * 32 + 5] = np.nan  # batch 4, the first replica's shard
    for kind, strategy in (("single", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy())):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = build_mlp((8, 8, 1), 10)
            opt = NestedLearningOptimizer(max_interval=3, skip_nonfinite=True)
            opt.compute_depths_from_model(model)
            model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x_bad, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        result[f"skip_{kind}"] = {
            "skipped": opt.skipped_steps,
            "iterations": int(keras.ops.convert_to_numpy(opt.iterations)),
            "finite": bool(all(np.isfinite(keras.ops.convert_to_numpy(v)).all()
                               for v in opt.variables)),
            "weights": [w.tolist() for w in model.get_weights()]}
    # 3. The entry point with trainer.strategy=mirrored trains; deterministic runs are bitwise equal.
    common = ["logger=none", "trainer.verbose=0", "trainer.epochs=3"]
    for name, extra in [("mirrored", ["trainer.strategy=mirrored"]),
                        ("det_a", ["trainer.deterministic=true", "trainer.max_steps=12"]),
                        ("det_b", ["trainer.deterministic=true", "trainer.max_steps=12"])]:
        keras.backend.clear_session()
        run(compose(common + extra), f"{out}/{name}")
        model = keras.models.load_model(f"{out}/{name}/model.keras")
        result[name] = [w.tolist() for w in model.get_weights()]
    json.dump(result, open(f"{out}/weights.json", "w"))
""")


def session_jobs(request, tmp_path_factory, data_dir):
    """SCRIPT in a subprocess, started with the session (tests/early.py, conftest's
    ``early_session``): this module has no in-process tests to run beside it."""
    if not selected(request, "test_mirrored_equals_single_device_and_determinism_is_bitwise",
                    module=sys.modules[__name__]):
        return {}
    tmp_path = tmp_path_factory.mktemp("distribution")
    # its own data dir: the digits are prepared there while tests may prepare the session's
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               NESTED_RESEARCH_DATA_DIR=str(tmp_path / "data"))
    run = functools.partial(early.run, [sys.executable, "-c", SCRIPT, str(tmp_path)],
                            env=env, timeout=600, cwd=ROOT)
    return {"distribution": lambda: (tmp_path, run())}


def test_mirrored_equals_single_device_and_determinism_is_bitwise(early_session):
    tmp_path, proc = early_session.result("distribution")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import numpy as np

    w = json.loads((tmp_path / "weights.json").read_text())
    assert w["replicas"] == 2
    for mode in ("attention", "adaptive"):
        assert w[f"intervals_{mode}"] == [1, 2, 3]
        single, mirrored = w[mode]
        for a, b in zip(single, mirrored):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)
    for kind in ("single", "mirrored"):
        run_ = w[f"skip_{kind}"]
        assert run_["skipped"] == 1 and run_["iterations"] == 7 and run_["finite"], kind
    for a, b in zip(w["skip_single"]["weights"], w["skip_mirrored"]["weights"]):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)
    results = json.loads((tmp_path / "mirrored" / "results.json").read_text())
    assert results["metrics"]["test/accuracy"] > 0.8
    for a, b in zip(w["det_a"], w["det_b"]):
        np.testing.assert_array_equal(np.array(a), np.array(b))

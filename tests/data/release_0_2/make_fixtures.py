"""Write the 0.2.x compatibility fixtures of this folder (run once, with release 0.2.0 installed).

Uses only what 0.2.0 and later both offer (the public classes, ``nested_research.models``'
builders and ``python -m nested_research.train``), so it documents how each fixture was made:

- ``<name>.keras``: a small model of each builder, compiled with a family optimizer, trained
  three steps (so every optimizer variable holds state), saved with ``model.save``; and
  ``<name>.npz``: the input it was probed with, its predictions, and every optimizer variable.
- ``run_finished/``: a finished ``python -m nested_research.train`` run (its ``model.keras``,
  ``results.json`` and last checkpoint), and ``run_killed/``: the same run killed after batch
  25 with checkpoints at batches 10 and 20 (``NESTED_RESEARCH_KILL_AT_STEP``), to resume.

    python tests/data/release_0_2/make_fixtures.py
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
#: The command-line run behind ``run_*``: digits, a tiny MLP, 2 epochs of 23 batches.
RUN_ARGS = ["logger=none", "trainer.epochs=2", "trainer.batch_size=64", "trainer.verbose=0",
            "trainer.deterministic=true", "trainer.checkpoint_every=10",
            "model.hidden_units=[8,8,8]", "memory=attention", "schedule_curve=cosine"]


def _models():
    import keras
    import numpy as np

    import nested_research
    from nested_research.models import build_cnn, build_mlp, build_transformer

    rng = np.random.default_rng(0)
    cases = {
        "mlp_nested": (lambda: build_mlp((8, 8, 1), 10, hidden_units=(8, 8, 8)),
                       lambda: nested_research.NestedLearningOptimizer(
                           learning_rate=nested_research.PerEpochSchedule(1e-2, steps_per_epoch=3),
                           max_interval=3),
                       rng.normal(size=(6, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 6)),
        "cnn_ademamix": (lambda: build_cnn((40,), 10, filters=(4, 4, 4), dense_units=8),
                         lambda: nested_research.AdEMAMix(
                             learning_rate=nested_research.WarmupCosineSchedule(
                                 1e-2, total_steps=10, warmup_steps=2),
                             alpha_warmup_steps=10, beta_3_warmup_steps=10),
                         rng.normal(size=(6, 40)).astype("float32"), rng.integers(0, 10, 6)),
        "transformer_m3": (lambda: build_transformer((12,), 16, vocab_size=16, d_model=8,
                                                     num_heads=2, num_layers=1, ff_dim=16),
                           lambda: nested_research.M3(learning_rate=1e-3),
                           rng.integers(0, 16, (6, 12)), rng.integers(0, 16, (6, 12))),
        "mlp_delta_momentum": (lambda: build_mlp((8, 8, 1), 10, hidden_units=(8, 8)),
                               lambda: nested_research.DeltaMomentum(learning_rate=0.05),
                               rng.normal(size=(6, 8, 8, 1)).astype("float32"),
                               rng.integers(0, 10, 6)),
    }
    for name, (build, make_opt, x, y) in cases.items():
        keras.utils.set_random_seed(0)
        model = build()
        optimizer = make_opt()
        if hasattr(optimizer, "compute_depths_from_model"):
            optimizer.compute_depths_from_model(model)
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        model.save(HERE / f"{name}.keras")
        np.savez(HERE / f"{name}.npz", x=x, predictions=model.predict(x, verbose=0),
                 **{f"opt_{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
        print("wrote", name)


def _run(out: pathlib.Path, **env):
    env = dict(os.environ, NESTED_RESEARCH_OUTPUT_DIR=str(out), TF_CPP_MIN_LOG_LEVEL="3", **env)
    subprocess.run([sys.executable, "-m", "nested_research.train", *RUN_ARGS,
                    "hydra.run.dir=" + str(out / "run")], cwd=ROOT, env=env)
    return out / "run"


def _runs(tmp: pathlib.Path):
    for name, env in (("run_finished", {}), ("run_killed", {"NESTED_RESEARCH_KILL_AT_STEP": "25"})):
        run = _run(tmp / name, **env)
        target = HERE / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run, target, ignore=shutil.ignore_patterns("*.log"))
        print("wrote", name)


if __name__ == "__main__":
    import tempfile

    _models()
    with tempfile.TemporaryDirectory() as tmp:
        _runs(pathlib.Path(tmp))

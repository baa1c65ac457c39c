"""The trainer: compile, fit with validation, evaluate on test. Plain typed arguments only.

Classification and sequence tasks both train with
``SparseCategoricalCrossentropy(from_logits=True)`` and report accuracy; the
model's outputs must line up with the targets (the recall Transformer emits
logits only at the query positions).  Metrics are named ``train/*``,
``val/*`` and ``test/*``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import keras

_KERAS_TO_OURS = {"loss": "loss", "accuracy": "accuracy"}


@dataclass
class TrainResult:
    metrics: dict                     # final train/val/test metrics
    history: dict                     # per-epoch metrics, our names
    steps: int                        # optimizer steps taken
    epochs: int                       # epochs started
    wall_time: float                  # seconds in fit + evaluate
    extra: dict = field(default_factory=dict)


def rename(logs: dict, prefix: str) -> dict:
    """Keras log names (``loss``, ``val_accuracy``) to ours (``train/loss``, ``val/accuracy``)."""
    out = {}
    for key, value in (logs or {}).items():
        if key.startswith("val_"):
            out[f"val/{key[4:]}"] = float(value)
        else:
            out[f"{prefix}/{key}"] = float(value)
    return out


class _StepLimit(keras.callbacks.Callback):
    """Stops training after ``max_steps`` optimizer steps."""

    def __init__(self, max_steps: int):
        super().__init__()
        self.max_steps = max_steps
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps >= self.max_steps:
            self.model.stop_training = True


class ProgressLog(keras.callbacks.Callback):
    """Appends one JSON line per epoch (``epoch``, ``step``, ``train/*``, ``val/*``) to ``path``.

    Sweep runners read it while the run goes on (hyperband early stopping).
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1,
               "step": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))}
        row.update(rename(logs, "train"))
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def fit(model: keras.Model, optimizer, data, *, epochs: int, max_steps: int | None = None,
        jit_compile: bool = False, callbacks: list | None = None,
        verbose: int = 1, progress_path: str | None = None,
        run_eagerly: bool = False) -> TrainResult:
    """Train ``model`` on ``data`` (a ``DataBundle``) and evaluate it on the test split.

    ``progress_path``: a JSON-lines file that gets one row of metrics per epoch.
    """
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
    )
    callbacks = list(callbacks or [])
    if progress_path:
        callbacks.append(ProgressLog(progress_path))
    if max_steps is not None:
        epochs = min(epochs, math.ceil(max_steps / data.steps_per_epoch))
        callbacks.append(_StepLimit(max_steps))
    start = time.perf_counter()
    history = model.fit(data.train, validation_data=data.val, epochs=epochs,
                        callbacks=callbacks, verbose=verbose, shuffle=False)  # data.train shuffles itself
    test_logs = model.evaluate(data.test, verbose=0, return_dict=True)
    wall = time.perf_counter() - start

    per_epoch = {}
    for key, values in history.history.items():
        name = next(iter(rename({key: 0.0}, "train")))
        per_epoch[name] = [float(v) for v in values]
    metrics = {k: v[-1] for k, v in per_epoch.items()}
    if "val/loss" in per_epoch:
        metrics["val/best_loss"] = min(per_epoch["val/loss"])
    metrics.update(rename(test_logs, "test"))
    opt = model.optimizer
    steps = int(keras.ops.convert_to_numpy(opt.iterations))
    return TrainResult(metrics=metrics, history=per_epoch, steps=steps,
                       epochs=len(history.epoch), wall_time=wall)

"""The trainer: compile, fit with validation, evaluate on test. Plain typed arguments only.

Classification and sequence tasks both train with
``SparseCategoricalCrossentropy(from_logits=True)`` and report accuracy; the
model's outputs must line up with the targets (the recall Transformer emits
logits only at the query positions).  Metrics are named ``train/*``,
``val/*`` and ``test/*``.

A byte-level language model (``data.task == "language_model"``: next-byte
targets at every position, so the loss is the mean next-byte cross entropy in
nats) also reports ``train/``, ``val/`` and ``test/bits_per_byte`` (and
``val/best_bits_per_byte``) = loss / ln 2, per epoch as well (:class:`BitsPerByte`).

A resumed run (``trainer.resume``) hands ``fit`` its checkpoint; ``fit`` owns the
``resume.Resume`` made of it: it restores the state into the compiled model, trims
``progress.jsonl`` to the checkpoint's epochs, starts the callbacks (the checkpointer's
counts among them) where the run left off, and joins the saved history to the new epochs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import keras

from nested_research.core.steps import StepCounter
from nested_research.training.guard import DEFAULT_MAX_NONFINITE_STEPS, NonFiniteGuard, QuietProgbar
from nested_research.training.resume import (EpochCut, Resume, advance_shuffle, epoch_stream,
                                             trim_progress)
from nested_research.training.stats_window import StatsWindow

_KERAS_TO_OURS = {"loss": "loss", "accuracy": "accuracy"}
LN2 = math.log(2.0)


@dataclass
class TrainResult:
    metrics: dict                     # final train/val/test metrics
    history: dict                     # per-epoch metrics, our names
    steps: int                        # optimizer steps taken
    epochs: int                       # epochs started
    wall_time: float                  # seconds in fit + evaluate
    extra: dict = field(default_factory=dict)
    skipped_steps: int = 0            # steps skipped for a non-finite loss/gradient (guard.py)


def rename(logs: dict, prefix: str) -> dict:
    """Keras log names (``loss``, ``val_accuracy``) to ours (``train/loss``, ``val/accuracy``)."""
    out = {}
    for key, value in (logs or {}).items():
        if key.startswith("val_"):
            out[f"val/{key[4:]}"] = float(value)
        else:
            out[f"{prefix}/{key}"] = float(value)
    return out


def bits_per_byte(logs: dict) -> dict:
    """Each loss of ``logs`` in bits per byte: ``<prefix>loss`` -> ``<prefix>bits_per_byte``
    = loss / ln 2 (Keras' ``loss``, ``val_loss`` or our ``test/loss``, ``val/best_loss``)."""
    return {f"{key[:-4]}bits_per_byte": float(value) / LN2
            for key, value in (logs or {}).items() if key.endswith("loss")}


class BitsPerByte(keras.callbacks.Callback):
    """Adds ``bits_per_byte`` and ``val_bits_per_byte`` (:func:`bits_per_byte`) to each epoch's
    logs; first in the list, so the history, ``progress.jsonl`` and the tracker all get them."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(bits_per_byte(logs))


class _StepLimit(keras.callbacks.Callback):
    """Stops training after ``max_steps`` optimizer steps."""

    def __init__(self, max_steps: int):
        super().__init__()
        self.max_steps = max_steps
        self.steps = 0
        self._counter = StepCounter()

    def on_epoch_begin(self, epoch, logs=None):
        self._counter.on_epoch_begin()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += self._counter.advance(batch)
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
        run_eagerly: bool = False,
        max_nonfinite_steps: int = DEFAULT_MAX_NONFINITE_STEPS,
        checkpointer=None, checkpoint=None) -> TrainResult:
    """Train ``model`` on ``data`` (a ``DataBundle``) and evaluate it on the test split.

    ``progress_path``: a JSON-lines file that gets one row of metrics per epoch.
    With an optimizer that records statistics (``stats_every``), only the steps of each
    window run the recording step (``stats_window.StatsWindow``).
    Steps with a non-finite loss or gradient are skipped (``guard.py``); ``max_nonfinite_steps``
    consecutive non-finite losses raise ``guard.NonFiniteLossError``.
    ``checkpointer``: a ``checkpoint_callback.Checkpointer`` (periodic checkpoints, and one at
    the end when ``model.fit`` returns); ``checkpoint``: a ``checkpoint_files.Checkpoint`` to
    continue from (module docstring).  The training data is ``resume.epoch_stream`` of
    ``data.train`` (one shuffle order per epoch).
    ``verbose``: Keras' progress bar (``guard.QuietProgbar``: ``skipped_steps`` shows once a
    step was skipped).
    """
    guard = NonFiniteGuard(max_nonfinite_steps).install(model)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
    )
    resume = None
    if checkpoint is not None:
        resume = Resume(checkpoint)
        resume.restore(model, data, extra_variables=guard.variables)
        if progress_path:  # its rows of epochs after the checkpoint are written again
            trim_progress(progress_path, resume.epochs_done)
        print(f"resuming {checkpoint.run_dir} from {checkpoint.path}: epoch "
              f"{resume.epoch + 1}, batch {resume.position} of the epoch, step {resume.step}")
    first_epoch, skip, done = (resume.epoch, resume.position, resume.step) if resume else (0, 0, 0)
    callbacks = list(callbacks or [])
    byte_lm = data.task == "language_model"
    if byte_lm:
        callbacks.insert(0, BitsPerByte())
    # the statistics-recording step only where a read needs it (stats_window.StatsWindow)
    callbacks.insert(0, StatsWindow(optimizer, start_step=done if resume is not None else None))
    if progress_path:
        callbacks.append(ProgressLog(progress_path))
    if max_steps is not None:
        epochs = min(epochs, math.ceil(max_steps / data.steps_per_epoch))
        callbacks.append(_StepLimit(max_steps))
        callbacks[-1].steps = done
    callbacks.append(guard)  # last: the others see the step that stops the run
    if checkpointer is not None:  # after the guard: a step that stops the run is not saved
        checkpointer.prepare(guard.variables, resume)
        callbacks.append(checkpointer)
    if verbose:  # last, where Keras puts its own bar
        callbacks.append(QuietProgbar())
    if skip:  # first: ends the interrupted epoch where an uninterrupted run would have
        callbacks.insert(0, EpochCut(first_epoch, data.steps_per_epoch - skip, done, max_steps))
    start = time.perf_counter()
    trained, ran = {}, 0
    if resume is None or not resume.done(epochs, max_steps):
        advance_shuffle(data.train, first_epoch)  # the finished epochs' shuffle orders
        history = model.fit(epoch_stream(data.train, first_epoch, epochs, skip),
                            steps_per_epoch=data.steps_per_epoch, initial_epoch=first_epoch,
                            validation_data=data.val, epochs=epochs,
                            callbacks=callbacks, verbose=verbose, shuffle=False)
        trained, ran = history.history, len(history.epoch)
        if checkpointer is not None:  # only when fit returned: a failed run keeps the last good
            checkpointer.save_final()
    test_logs = model.evaluate(data.test, verbose=0, return_dict=True)
    wall = time.perf_counter() - start

    per_epoch = {k: list(v) for k, v in resume.history.items()} if resume else {}
    before = resume.epochs_done if resume else 0
    for key, values in trained.items():
        name = next(iter(rename({key: 0.0}, "train")))
        per_epoch[name] = per_epoch.get(name, [])[:before] + [float(v) for v in values]
    metrics = {k: v[-1] for k, v in per_epoch.items()}
    if "val/loss" in per_epoch:
        metrics["val/best_loss"] = min(per_epoch["val/loss"])
    metrics.update(rename(test_logs, "test"))
    if byte_lm:  # test/ and val/best_ (the per-epoch ones are the same numbers)
        metrics.update(bits_per_byte(metrics))
    opt = model.optimizer
    steps = int(keras.ops.convert_to_numpy(opt.iterations))
    return TrainResult(metrics=metrics, history=per_epoch, steps=steps,
                       epochs=before + ran, wall_time=wall,
                       skipped_steps=guard.skipped_steps)

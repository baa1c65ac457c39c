"""The checkpointing callback of ``fit`` (``trainer.checkpoint_every``).

When
    Every ``every`` batches (0: only at the end of a successful fit), and at
    the end of a fit that returned normally; never after ``fit`` raised (a run
    stopped by the non-finite guard keeps its last good periodic checkpoint).
    A checkpoint that falls on the last batch of an epoch is taken after the
    epoch's validation and logging, as "epoch e+1, position 0".

What and how
    ``checkpoint_files.write``: the model's, the optimizer's, the running
    metrics' and the guard's variables, the tracker's newest rows and the
    run's facts, written atomically (``checkpoint_files.py`` describes the
    files).  ``fit`` hands the checkpointer the guard's variables and, in a
    resumed run, its ``resume.Resume`` (:meth:`Checkpointer.prepare`).

Test hook
    ``NESTED_RESEARCH_KILL_AT_STEP=<n>`` (``checkpoint_files.KILL_ENV``) makes the
    training process SIGKILL itself right after batch ``n`` (after that
    batch's checkpoint, if one was due).  Only the resume tests use it.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

import keras

from nested_research.training.checkpoint_files import KILL_ENV, rng_state, state_variables, write
from nested_research.core.steps import StepCounter
from nested_research.training.fit import rename

if TYPE_CHECKING:
    from nested_research.training.resume import Resume


class Checkpointer(keras.callbacks.Callback):
    """Writes checkpoints of ``fit`` into ``<run_dir>/checkpoints`` (module docstring).

    ``every``: batches between checkpoints (0: only ``save_final``).  ``meta``:
    facts stored with every checkpoint (config, W&B run).  ``before_save``:
    called first (the tracker's flush, so W&B holds every row up to the step).
    ``log_rows``: returns the tracker's newest rows (``rows.json``).
    ``defer_tail``: a checkpoint due
    in the last ``defer_tail`` batches of an epoch waits for the epoch's end
    (under a ``tf.distribute`` strategy Keras first reads a batch of the stream
    ahead of training, and the distributed input prefetches a few more: a
    resumed epoch shorter than that would draw the next epoch's shuffle order
    early).  Must come after the callbacks that log (progress, W&B) so that a
    checkpoint follows its rows.
    """

    def __init__(self, run_dir: str, every: int, steps_per_epoch: int, keep: int = 2,
                 meta: dict | None = None, before_save=None, log_rows=None,
                 defer_tail: int = 0):
        super().__init__()
        self.defer_tail = int(defer_tail)
        self.run_dir, self.every, self.keep = run_dir, int(every), int(keep)
        self.steps_per_epoch = int(steps_per_epoch)
        self.meta = dict(meta or {})
        self.before_save = before_save
        self.log_rows = log_rows
        self.resume: Resume | None = None
        self.extra_variables = []
        self.history = {}
        self.step = self.epoch = self.position = 0
        self.saved = []          # paths written by this fit
        self._counter = StepCounter()
        self._due_at_epoch_end = False
        kill = os.environ.get(KILL_ENV)
        self._kill_at = int(kill) if kill else None

    def prepare(self, extra_variables, resume: Resume | None = None) -> None:
        """What ``fit`` hands over before training: the variables saved beside the model's
        (the guard's) and the :class:`Resume` the fit continues from (``None``: a fresh run)."""
        self.extra_variables = list(extra_variables)
        self.resume = resume
        if resume is not None:
            self.history = {k: list(v) for k, v in resume.history.items()}
            self.step, self.epoch = resume.step, resume.epoch

    # -- hooks
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.position = epoch, 0
        self._counter.on_epoch_begin()
        if self.resume is not None and epoch == self.resume.epoch:
            self.position = self.resume.position
            if self.resume.metrics is not None and self.position:  # the epoch's running means
                for v, value in zip(*self.resume.metrics):  # (per replica: summed on read)
                    v.assign(value)

    def on_train_batch_end(self, batch, logs=None):
        n = self._counter.advance(batch)
        self.position += n
        self.step += n
        if self.every and self.step // self.every > (self.step - n) // self.every:
            if self.position >= self.steps_per_epoch - self.defer_tail:
                self._due_at_epoch_end = True  # after validation and the epoch's rows
            else:
                self.save(self.epoch, self.position, with_metrics=True)
        if self._kill_at is not None and self.step >= self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook (module docstring)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in rename(logs, "train").items():
            self.history.setdefault(key, []).append(float(value))
        if self._due_at_epoch_end:
            self._due_at_epoch_end = False
            self.save(epoch + 1, 0)

    # -- saving
    def save_final(self) -> str:
        """The end-of-fit checkpoint (call only when ``fit`` returned normally)."""
        if self.position >= self.steps_per_epoch:
            return self.save(self.epoch + 1, 0)
        return self.save(self.epoch, self.position, final=True)

    def save(self, epoch: int, position: int, with_metrics: bool = False,
             final: bool = False) -> str:
        if self.before_save is not None:
            self.before_save()
        variables = state_variables(self.model, self.extra_variables)
        if not with_metrics:
            variables["metrics"] = []
        opt = self.model.optimizer
        meta = dict(self.meta, epoch=int(epoch), position=int(position),
                    steps_per_epoch=self.steps_per_epoch, fit_done=bool(final),
                    iterations=int(keras.ops.convert_to_numpy(opt.iterations)),
                    history=self.history, rng=rng_state())
        rows = self.log_rows() if self.log_rows is not None else None
        path = write(self.run_dir, self.step, variables, meta, keep=self.keep, rows=rows)
        self.saved.append(path)
        return path

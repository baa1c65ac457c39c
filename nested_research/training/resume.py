"""Resuming a run from its checkpoint (``trainer.resume``).

Checked before anything is written (:func:`check_resume`, in preflight): the
run directory holds a complete checkpoint (``checkpoint_files.latest``), the
run has not finished, and the checkpoint was written with this config
(:func:`config_diff`; only the keys in ``RESUME_MAY_DIFFER`` may change, and those of
``RESUME_MAY_BE_GONE`` may be missing now: release 0.2 wrote them where they had no effect).
``job.run`` then checks the model against it (:func:`check_model`, before the
tracker writes), has the tracker continue its run (``Tracker.continue_run``:
the W&B run goes on under its id without logging a step twice,
``tracking.rows.RowJournal``) and hands the checkpoint to ``fit.fit``.

``fit`` makes the :class:`Resume` and owns it: it restores weights, optimizer
state, metrics, RNG states, step and epoch; the checkpointer counts on from
it; ``progress.jsonl`` loses rows of epochs after the checkpoint
(:func:`trim_progress`; they are written again).  The batches of the
interrupted epoch that were already trained are skipped, so the data order is
exactly that of an uninterrupted run: the training stream is ``data.train``
iterated once per epoch (one new shuffle order per iteration, drawn from the
dataset's seeded generator, :func:`epoch_stream`), and a resumed run first
draws (and discards) the orders of the finished epochs
(:func:`advance_shuffle`); :class:`EpochCut` ends the interrupted epoch where
an uninterrupted run would have.
"""

from __future__ import annotations

import json
import os

import keras

from nested_research.core.files import replace_file
from nested_research.core.steps import StepCounter
from nested_research.optimizers.protocols import ConvertsSavedState
from nested_research.training.checkpoint_files import (Checkpoint, CheckpointError, checkpoints_dir,
                                                       latest, list_checkpoints, mismatch,
                                                       set_rng_state, state_variables)

#: Config keys that may differ between a run and its resumption (where things are, how loud).
RESUME_MAY_DIFFER = ("trainer.resume", "trainer.verbose", "trainer.checkpoint_every",
                     "trainer.keep_checkpoints", "paths.", "data.data_dir", "data.autotune",
                     "logger.dir", "logger.mode", "logger.init_timeout", "logger.finish_timeout")
#: Keys that release 0.2 wrote into every config and this version writes only where they apply:
#: ``optimizer.uses_memory_groups`` (gone), the groups that come with ``optimizer=nested``
#: (a baseline's config has none) and the depth-curve keys of ``schedule_curve=none``/``manual``.
#: A saved key of these that the current config does not have is no difference (it had no
#: effect on the run); where both have it, it is compared.
RESUME_MAY_BE_GONE = ("optimizer.uses_memory_groups", "memory.", "blend_mode.", "schedule_curve.")


def check_model(ckpt: Checkpoint, model) -> None:
    """``CheckpointError`` if the checkpoint's model variables do not fit ``model``."""
    why = mismatch("model", list(model.variables), ckpt.meta["variables"]["model"])
    if why:
        raise CheckpointError(f"trainer.resume={ckpt.run_dir!r}: checkpoint {ckpt.path} is of "
                              f"a different model: {why}")


def _build_metrics(model, data) -> None:
    """Create the compiled metrics' variables (Keras builds them lazily in the first step)."""
    for x, y in (data.val if data.val is not None else data.test).take(1):
        model.compute_metrics(x, y, model(x, training=False))
    model.reset_metrics()


class Resume:
    """Restores a checkpoint into a compiled model (``restore``); tells ``fit`` where to go on."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.epoch, self.position, self.step = ckpt.epoch, ckpt.position, ckpt.step
        self.history = ckpt.history
        self.metrics = None  # running epoch metrics, assigned at the resumed epoch's start

    @property
    def epochs_done(self) -> int:
        """Epochs in the checkpoint's history (finished before it)."""
        return max((len(v) for v in self.history.values()), default=0)

    def restore(self, model, data, extra_variables=()) -> None:
        """Build the optimizer and metrics, then assign every saved value (checked first)."""
        opt = model.optimizer
        if not opt.built:  # as Keras' first apply() would: same scope, same variables
            with keras.name_scope(opt.name, caller=opt):
                opt.build(model.trainable_variables)
        _build_metrics(model, data)
        variables = state_variables(model, extra_variables)
        arrays = dict(self.ckpt.arrays())
        specs = dict(self.ckpt.meta["variables"])
        if len(arrays["optimizer"]) != len(variables["optimizer"]) and \
                isinstance(opt, ConvertsSavedState):  # an earlier state layout
            try:
                arrays["optimizer"] = opt.convert_saved_state(arrays["optimizer"])
            except ValueError as err:
                raise CheckpointError(f"trainer.resume={self.ckpt.run_dir!r}: checkpoint "
                                      f"{self.ckpt.path} does not fit this run: {err}") from err
            specs["optimizer"] = [{"path": v.path, "shape": list(v.shape),
                                   "dtype": keras.backend.standardize_dtype(v.dtype)}
                                  for v in variables["optimizer"]]
        for group in ("model", "optimizer", "extra"):
            why = mismatch(group, variables[group], specs[group])
            if why:
                raise CheckpointError(f"trainer.resume={self.ckpt.run_dir!r}: checkpoint "
                                      f"{self.ckpt.path} does not fit this run: {why}")
        if specs["metrics"] and not mismatch("metrics", variables["metrics"], specs["metrics"]):
            self.metrics = (variables["metrics"], arrays["metrics"])
        for group in ("model", "optimizer", "extra"):
            for v, value in zip(variables[group], arrays[group]):
                v.assign(value)
        set_rng_state(self.ckpt.meta.get("rng"))

    def done(self, epochs: int, max_steps: int | None) -> bool:
        """Nothing is left to train (the checkpoint is from the end of the fit)."""
        return self.epoch >= epochs or (max_steps is not None and self.step >= max_steps)


def advance_shuffle(dataset, epochs: int) -> None:
    """Draw (and discard) ``epochs`` shuffle orders of ``dataset``, as finished epochs did.

    Each iterator of a ``shuffle(seed=..., reshuffle_each_iteration=True)``
    pipeline takes the next order from the dataset's seeded generator when it
    is created; one element is read so that the draw has certainly happened.
    """
    for _ in range(int(epochs)):
        iterator = iter(dataset)
        next(iterator, None)
        del iterator


def epoch_stream(train, first_epoch: int, epochs: int, skip: int = 0):
    """One ``tf.data`` stream of epochs ``first_epoch .. epochs-1`` of ``train``.

    Every epoch is a fresh iteration of ``train`` (its own shuffle order);
    the first loses its first ``skip`` batches (trained before the checkpoint).
    Fed to ``model.fit`` with ``steps_per_epoch``, Keras keeps one iterator for
    the whole fit, so the orders are drawn once per epoch whatever Keras does
    with iterators.  The stream takes ``train``'s ``tf.data.Options`` (a new
    root does not inherit them from the datasets ``flat_map`` makes).
    """
    import tensorflow as tf

    first = tf.constant(int(first_epoch), tf.int64)
    k = tf.constant(int(skip), tf.int64)

    def one_epoch(epoch):
        return train.skip(tf.where(tf.equal(epoch, first), k, tf.constant(0, tf.int64)))

    stream = tf.data.Dataset.range(int(first_epoch), int(epochs)).flat_map(one_epoch)
    return stream.with_options(train.options())


class EpochCut(keras.callbacks.Callback):
    """Ends epoch ``epoch`` after ``batches`` batches (the rest of an interrupted epoch).

    Keras' epochs all have ``steps_per_epoch`` batches; this sets
    ``stop_training`` at the cut (Keras then validates and ends the epoch) and
    clears it again first thing in ``on_epoch_end``, so training goes on.  It
    must be the first callback; a stop that another callback asks for in that
    same batch is kept when it is the step limit (``stop_step``).
    """

    def __init__(self, epoch: int, batches: int, first_step: int, stop_step: int | None):
        super().__init__()
        self.epoch, self.batches = int(epoch), int(batches)
        self.step, self.stop_step = int(first_step), stop_step
        self._current, self._cut = None, False
        self._counter = StepCounter()

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch
        self._counter.on_epoch_begin()

    def on_train_batch_end(self, batch, logs=None):
        self.step += self._counter.advance(batch)
        if self._current == self.epoch and int(batch) + 1 >= self.batches \
                and not self.model.stop_training:
            self.model.stop_training = True
            self._cut = self.stop_step is None or self.step < self.stop_step

    def on_epoch_end(self, epoch, logs=None):
        if self._cut:
            self.model.stop_training = False
            self._cut = False


def _flatten(tree, prefix="") -> dict:
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        if not tree and prefix:
            out[prefix[:-1]] = {}
        return out
    out[prefix[:-1]] = tree
    return out


#: ``_target_`` names that release 0.2 wrote into a checkpoint's config, by today's name (the
#: classes moved into packages; the conf files name them by their package's export).
RENAMED_TARGETS = {
    "nested_research.lr_schedule.PerEpochSchedule": "nested_research.optimizers.PerEpochSchedule",
    "nested_research.lr_schedule.WarmupCosineSchedule":
        "nested_research.optimizers.WarmupCosineSchedule",
}


def current_names(config):
    """``config`` (a checkpoint's, as saved) with every renamed ``_target_`` under today's name."""
    if isinstance(config, dict):
        return {k: (RENAMED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str)
                    else current_names(v)) for k, v in config.items()}
    if isinstance(config, list):
        return [current_names(v) for v in config]
    return config


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def config_diff(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """``(key, saved, current)`` for every differing key not in ``RESUME_MAY_DIFFER``; a saved
    key of ``RESUME_MAY_BE_GONE`` that ``current`` does not have is none."""
    a, b = _flatten(saved or {}), _flatten(current or {})
    missing = "<not set>"
    out = []
    for key in sorted(set(a) | set(b)):
        if _matches(key, RESUME_MAY_DIFFER) or (key not in b and _matches(key, RESUME_MAY_BE_GONE)):
            continue
        if a.get(key, missing) != b.get(key, missing):
            out.append((key, a.get(key, missing), b.get(key, missing)))
    return out


def check_resume(resume: str, config: dict) -> Checkpoint:
    """The checkpoint ``trainer.resume=<resume>`` continues from; ``CheckpointError`` if none fits.

    Reads only: nothing on disk changes, whatever the outcome.
    """
    run_dir = os.path.abspath(os.path.expanduser(str(resume)))
    param = f"trainer.resume={str(resume)!r}"
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"{param}: no such directory; give the run directory of the run "
                              f"to continue (the folder that holds its checkpoints/)")
    if os.path.exists(os.path.join(run_dir, "results.json")):
        raise CheckpointError(f"{param}: that run already finished ({run_dir}/results.json "
                              f"exists); nothing to resume. Start a new run without "
                              f"trainer.resume")
    found = list_checkpoints(run_dir)
    ckpt = latest(run_dir)
    if ckpt is None:
        what = (f"only damaged ones ({', '.join(os.path.basename(p) for _, p in found)})"
                if found else "none")
        raise CheckpointError(
            f"{param}: no complete checkpoint in {checkpoints_dir(run_dir)} ({what}); the run "
            f"stopped before its first checkpoint (trainer.checkpoint_every) or is not a "
            f"training run. Start it again without trainer.resume")
    diff = config_diff(current_names(ckpt.meta.get("config") or {}), config)
    if diff:
        model_keys = [d for d in diff if d[0].split(".")[0] in ("model", "data")]
        kind = "a different model" if model_keys else "a different configuration"
        shown = (model_keys or diff)[:3]
        others = [k for k, _, _ in diff if k not in {s[0] for s in shown}]
        details = "; ".join(f"{k} is {s!r} there, {c!r} here" for k, s, c in shown)
        more = f" (and {len(others)} more: {', '.join(others[:8])})" if others else ""
        raise CheckpointError(
            f"{param}: checkpoint {ckpt.path} was written by {kind}: {details}{more}. A run "
            f"resumes with its own settings: repeat its overrides "
            f"({os.path.join(run_dir, '.hydra', 'overrides.yaml')}) and add trainer.resume; only "
            f"trainer.verbose/checkpoint_every/keep_checkpoints, paths.*, data.data_dir, "
            f"data.autotune and logger.dir/mode may change")
    return ckpt


def trim_progress(path: str, epochs_done: int) -> None:
    """Keep the rows of ``progress.jsonl`` for epochs ``<= epochs_done`` (atomically)."""
    if not os.path.exists(path):
        return
    with open(path) as fh:
        lines = fh.readlines()
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by the crash
            continue
        if isinstance(row, dict) and int(row.get("epoch", 0)) <= epochs_done:
            keep.append(json.dumps(row) + "\n")
    if keep == lines:
        return
    replace_file(path, "".join(keep).encode())

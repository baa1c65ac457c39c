"""Experiment trackers: Weights & Biases (offline by default) and none.

A tracker is made at the entry point from the ``logger`` config group and
takes plain arguments.  The trainer uses three calls::

    tracker.start(config, run_dir)        before training
    tracker.callbacks(optimizer)          Keras callbacks that log during fit
    tracker.finish(summary, failed)       always, also when the run failed

``stats_every`` is the optimizer's in-step statistics period (0: off).
"""

from __future__ import annotations

import os

import keras
import numpy as np

from nested_research.stats import layer_stats, format_table


def _base(optimizer):
    """The optimizer under a ``LossScaleOptimizer`` wrapper, if any."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def layer_log(optimizer) -> dict:
    """``memory_stats()`` flattened to W&B keys ``layers/<layer>/<field>`` (numbers only)."""
    opt = _base(optimizer)
    if not hasattr(opt, "memory_stats"):
        return {}
    out = {}
    for layer, row in layer_stats(opt).items():
        for key, value in row.items():
            if value is not None:
                out[f"layers/{layer}/{key}"] = value
    return out


class NullTracker:
    """Logs nothing; prints the per-layer table at the end."""

    def __init__(self, stats_every: int = 0):
        self.stats_every = int(stats_every)
        self.run_dir = None

    def start(self, config: dict, run_dir: str) -> None:
        self.run_dir = run_dir

    def callbacks(self, optimizer) -> list:
        return []

    def finish(self, summary: dict | None, failed: bool = False, optimizer=None) -> None:
        opt = _base(optimizer) if optimizer is not None else None
        if opt is not None and hasattr(opt, "memory_stats") and opt.built:
            print("\nPer-layer optimizer state:")
            print(format_table(opt.memory_stats()))


class _WandbCallback(keras.callbacks.Callback):
    def __init__(self, run, optimizer, stats_every: int):
        super().__init__()
        self.run = run
        self.opt = optimizer
        self.stats_every = stats_every

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.opt.iterations))
        payload = {f"train/{k}": float(v) for k, v in (logs or {}).items()}
        payload["train/lr"] = float(keras.ops.convert_to_numpy(
            _base(self.opt).learning_rate)) if step == 0 else self._lr_used(step)
        payload["trainer/step"] = step
        if self.stats_every and step % self.stats_every == 0:
            payload.update(layer_log(self.opt))
        self.run.log(payload)

    def _lr_used(self, step):
        opt = _base(self.opt)
        lr = opt._learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            return float(keras.ops.convert_to_numpy(lr(step - 1)))
        return float(keras.ops.convert_to_numpy(opt.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.opt.iterations))
        payload = {("val/" + k[4:] if k.startswith("val_") else f"train_epoch/{k}"): float(v)
                   for k, v in (logs or {}).items()}
        payload["trainer/epoch"] = epoch + 1
        payload["trainer/step"] = step
        self.run.log(payload)


class WandbTracker:
    """A W&B run per training run; offline unless told otherwise, never waits on the network."""

    def __init__(self, mode: str = "offline", project: str = "nested-research",
                 entity: str | None = None, group: str | None = None, tags=(),
                 name: str | None = None, dir: str | None = None, stats_every: int = 25,
                 timing_every: int = 100, log_model: bool = False):
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode={mode!r} is not one of ('offline', 'online', 'disabled')")
        self.mode = os.environ.get("WANDB_MODE", mode)
        self.project, self.entity, self.group = project, entity, group
        self.tags, self.name, self.dir = list(tags or []), name, dir
        self.stats_every, self.timing_every = int(stats_every), int(timing_every)
        self.log_model = bool(log_model)
        self.run = None

    def start(self, config: dict, run_dir: str) -> None:
        import wandb

        wandb_dir = os.environ.get("WANDB_DIR", self.dir or run_dir)
        os.makedirs(wandb_dir, exist_ok=True)
        self.run = wandb.init(
            project=self.project, entity=self.entity, group=self.group, tags=self.tags,
            name=self.name, dir=wandb_dir, mode=self.mode, config=config, reinit="create_new",
            settings=wandb.Settings(silent=True, init_timeout=60, x_disable_stats=True))
        self.run.define_metric("trainer/step")
        self.run.define_metric("trainer/epoch")
        for pattern in ("train/*", "layers/*"):
            self.run.define_metric(pattern, step_metric="trainer/step")
        for pattern in ("val/*", "train_epoch/*"):
            self.run.define_metric(pattern, step_metric="trainer/epoch")

    def callbacks(self, optimizer) -> list:
        return [_WandbCallback(self.run, optimizer, self.stats_every)]

    def finish(self, summary: dict | None, failed: bool = False, optimizer=None) -> None:
        if self.run is None:
            return
        for key, value in (summary or {}).items():
            if isinstance(value, (int, float, np.floating, np.integer)):
                self.run.summary[key] = value
        run_dir = getattr(self.run, "dir", None)
        self.run.finish(exit_code=1 if failed else 0)
        if self.mode == "offline" and run_dir:
            print(f"W&B offline run: {os.path.dirname(run_dir)}\n"
                  f"  upload with: wandb sync {os.path.dirname(run_dir)}")
        self.run = None

"""Learning-rate schedules: the seed's per-epoch warmup/hold/decay, and warmup+cosine.

One way to make a schedule for a run: every schedule here is a :class:`RunSchedule`, sized by
``for_run(lr0, steps_per_epoch=..., total_steps=..., **params)``, which takes what it needs of the
run's length.  The trainer's ``lr_schedule`` group calls it (``training/builders.py``), and so do
the nested optimizer's seed keywords (``steps_per_epoch`` and the ``lr_*_fraction`` keywords,
:class:`EpochParams`, and ``set_steps_per_epoch``): a thin front on the same
:class:`PerEpochSchedule`.

Per-epoch schedule (``PerEpochSchedule``).  Inside every epoch of ``S``
steps, with position ``u = (step mod S) / S`` in ``[0, 1)``, base rate
``lr0`` (a float, or another schedule evaluated at the same step) and floor
``lr_min = lr_min_fraction * lr0``::

    warmup  u < W:          lr = lr_min + (lr0 - lr_min) * u / W
    hold    W <= u < W + H: lr = lr0
    decay   otherwise:      lr = lr_min + (lr0 - lr_min) * (1 + cos(pi * (u - W - H) / D)) / 2

with ``W, H, D = lr_warmup_fraction, lr_hold_fraction, lr_decay_fraction``
(they must sum to 1).  The schedule restarts at every epoch.

NOTE: the seed names the phases but not their shapes; warmup is linear from
the floor (so the first step never has a zero rate) and decay is a half
cosine down to the floor.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from nested_research.core import checks
from nested_research.core.hparams import HParams, integer, param, real

_SUM_TOL = 1e-6


def validate_fractions(warmup: float, hold: float, decay: float, min_fraction: float) -> None:
    """Raise ``ValueError`` unless the phase fractions are in [0, 1] and sum to 1."""
    for name, value in (("lr_warmup_fraction", warmup), ("lr_hold_fraction", hold),
                        ("lr_decay_fraction", decay), ("lr_min_fraction", min_fraction)):
        checks.check_real(name, value, 0.0, 1.0)
    total = warmup + hold + decay
    if abs(total - 1.0) > _SUM_TOL:
        raise ValueError(
            f"lr_warmup_fraction + lr_hold_fraction + lr_decay_fraction = {total:g} "
            f"({warmup:g} + {hold:g} + {decay:g}); the three fractions must sum to 1")


class RunSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule sized by the run it serves (module docstring)."""

    @classmethod
    def for_run(cls, initial_learning_rate, *, steps_per_epoch: int, total_steps: int, **params):
        """The schedule for a run of ``total_steps`` optimizer steps in epochs of
        ``steps_per_epoch``; ``params``: the schedule's own parameters."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class EpochParams(HParams):
    """The seed's per-epoch schedule keywords: with ``steps_per_epoch`` set, the optimizer's
    ``learning_rate`` is wrapped in ``PerEpochSchedule`` (the Hydra ``lr_schedule=per_epoch``
    builds the same schedule)."""

    steps_per_epoch: int = param(None, integer(1, optional=True))
    lr_warmup_fraction: float = param(0.25, real(0.0, 1.0))
    lr_hold_fraction: float = param(0.25, real(0.0, 1.0))
    lr_decay_fraction: float = param(0.50, real(0.0, 1.0))
    lr_min_fraction: float = param(0.01, real(0.0, 1.0))

    def validate(self) -> None:
        validate_fractions(self.lr_warmup_fraction, self.lr_hold_fraction,
                           self.lr_decay_fraction, self.lr_min_fraction)

    def fractions(self) -> dict:
        """The phase fractions, as ``PerEpochSchedule`` takes them."""
        return {k: v for k, v in self.as_dict().items() if k != "steps_per_epoch"}

    @classmethod
    def of(cls, schedule) -> "EpochParams":
        """The keywords that describe ``schedule`` (a ``PerEpochSchedule``; else none set)."""
        if not isinstance(schedule, PerEpochSchedule):
            return cls()
        return cls(steps_per_epoch=schedule.steps_per_epoch, **schedule.fractions())


def _base_rate(base, step):
    if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
        return ops.cast(base(step), "float32")
    return ops.cast(base, "float32")


def _serialize_base(base):
    if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
        return keras.optimizers.schedules.serialize(base)
    return float(base)


def _deserialize_base(base):
    if isinstance(base, dict):
        return keras.optimizers.schedules.deserialize(base)
    return base


@keras.saving.register_keras_serializable(package="nested_research")
class PerEpochSchedule(RunSchedule):
    """Warmup -> hold -> decay inside every epoch (see the module docstring).

    Args:
        initial_learning_rate: peak rate ``lr0``: a float or a
            ``LearningRateSchedule`` (then ``lr0`` follows it step by step).
        steps_per_epoch: ``S``, steps in one epoch.
        lr_warmup_fraction, lr_hold_fraction, lr_decay_fraction: ``W, H, D``.
        lr_min_fraction: floor as a fraction of ``lr0``.
    """

    def __init__(self, initial_learning_rate, steps_per_epoch: int,
                 lr_warmup_fraction: float = 0.25, lr_hold_fraction: float = 0.25,
                 lr_decay_fraction: float = 0.50, lr_min_fraction: float = 0.01):
        checks.check_int("steps_per_epoch", steps_per_epoch, 1)
        validate_fractions(lr_warmup_fraction, lr_hold_fraction, lr_decay_fraction,
                           lr_min_fraction)
        self.initial_learning_rate = _deserialize_base(initial_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.lr_warmup_fraction = float(lr_warmup_fraction)
        self.lr_hold_fraction = float(lr_hold_fraction)
        self.lr_decay_fraction = float(lr_decay_fraction)
        self.lr_min_fraction = float(lr_min_fraction)

    @classmethod
    def for_run(cls, initial_learning_rate, *, steps_per_epoch: int, total_steps: int = None,
                **params):
        return cls(initial_learning_rate, steps_per_epoch, **params)

    def fractions(self) -> dict:
        return {"lr_warmup_fraction": self.lr_warmup_fraction,
                "lr_hold_fraction": self.lr_hold_fraction,
                "lr_decay_fraction": self.lr_decay_fraction,
                "lr_min_fraction": self.lr_min_fraction}

    def factor(self, step):
        """The schedule's multiplier of ``lr0`` at ``step`` (in ``[lr_min_fraction, 1]``)."""
        s = float(self.steps_per_epoch)
        # The modulus in integers: float32 cannot hold every step above 2**24.
        u = ops.cast(ops.mod(ops.cast(step, "int64"), self.steps_per_epoch), "float32") / s
        w, h, d = self.lr_warmup_fraction, self.lr_hold_fraction, self.lr_decay_fraction
        floor = self.lr_min_fraction
        warm = floor + (1.0 - floor) * u / max(w, 1e-12)
        decay_pos = ops.clip((u - w - h) / max(d, 1e-12), 0.0, 1.0)
        decay = floor + (1.0 - floor) * 0.5 * (1.0 + ops.cos(math.pi * decay_pos))
        return ops.where(u < w, warm, ops.where(u < w + h, 1.0, decay))

    def __call__(self, step):
        return _base_rate(self.initial_learning_rate, step) * self.factor(step)

    def get_config(self):
        return {
            "initial_learning_rate": _serialize_base(self.initial_learning_rate),
            "steps_per_epoch": self.steps_per_epoch,
            **self.fractions(),
        }


@keras.saving.register_keras_serializable(package="nested_research")
class WarmupCosineSchedule(RunSchedule):
    """Linear warmup over ``warmup_steps`` to ``lr0``, then one cosine to ``lr_min_fraction * lr0``.

    ``lr = lr0 * (t + 1) / warmup_steps`` for ``t < warmup_steps``; then
    ``lr = lr0 * (f + (1 - f) * (1 + cos(pi * min(1, (t - warmup_steps) / (total_steps - warmup_steps)))) / 2)``.
    """

    def __init__(self, initial_learning_rate: float, total_steps: int, warmup_steps: int = 0,
                 lr_min_fraction: float = 0.0):
        checks.check_int("total_steps", total_steps, 1)
        checks.check_int("warmup_steps", warmup_steps, 0, total_steps - 1)
        checks.check_real("lr_min_fraction", lr_min_fraction, 0.0, 1.0)
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.lr_min_fraction = float(lr_min_fraction)

    @classmethod
    def for_run(cls, initial_learning_rate, *, steps_per_epoch: int = None, total_steps: int,
                **params):
        return cls(initial_learning_rate, total_steps, **params)

    def __call__(self, step):
        t = ops.cast(step, "float32")
        lr0 = self.initial_learning_rate
        warm = lr0 * (t + 1.0) / max(self.warmup_steps, 1)
        pos = ops.clip((t - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1),
                       0.0, 1.0)
        f = self.lr_min_fraction
        cos = lr0 * (f + (1.0 - f) * 0.5 * (1.0 + ops.cos(math.pi * pos)))
        return ops.where(t < self.warmup_steps, warm, cos)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "lr_min_fraction": self.lr_min_fraction}

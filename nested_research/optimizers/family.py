"""The shell every optimizer of the family shares: declared parameters and ``skip_nonfinite``.

A family optimizer is a ``keras.optimizers.Optimizer`` subclass that lists
its parameter groups (``HPARAMS``: typed ``hparams.HParams`` dataclasses) and
writes ``build`` and ``update_step`` over pure update functions.  From the
groups this base derives, once for every optimizer:

* the constructor keywords and their defaults (``inspect.signature`` shows
  them), validated by the groups' checks before anything is built;
* read-only attributes (``opt.beta_2``) and ``opt.hparams[group]``;
* ``get_config`` (and so ``from_config``, ``.keras`` files, ``serialize``);
* :func:`check_arguments`: the keywords checked without building the
  optimizer (a job's preflight; Keras' own keywords as Keras checks them,
  ``KerasParams``).

Each optimizer also names its state per trainable variable (``slots`` and
``STATE_ROLES``; ``model_variables``): the ``protocols.StatefulOptimizer``
that the tracker reads.

Everything else is Keras' own ``Optimizer``: its ``apply`` does gradient
clipping, weight decay, learning-rate schedules, loss scaling, EMA,
gradient accumulation and distribution.

``skip_nonfinite`` (every family optimizer takes it; default ``False``):
when on, a step whose gradients hold any NaN or inf leaves the weights and
every optimizer variable unchanged (``iterations`` included: learning-rate
schedules and update intervals run on it, so the next good step is the step
the skipped one would have been) and adds 1 to ``skipped_steps``.  The
decision is global under a ``tf.distribute`` strategy (``nonfinite.py``); it
works under XLA and inside Keras' ``LossScaleOptimizer`` (mixed precision),
which skips the scaled gradients' overflows itself before calling us.
Cost: one ``isfinite`` pass over the gradients and a ``cond`` around the
update.  Measured (``nested_research/bench/optimizer.py``, 4.2M parameters, 2-core
CPU): nothing measurable in graph mode or for ``attention`` under XLA; 1.8x
for ``fixed`` under XLA, whose small conditional XLA turns into selects
(the old and new state both kept, copies added).  Hence off by default.
"""

from __future__ import annotations

import dataclasses
import inspect
import types

import keras
from keras import ops

from typing import Mapping

from nested_research.core import checks, hparams
from nested_research.core.hparams import HParams, anything, boolean, param
from nested_research.optimizers import nonfinite


@dataclasses.dataclass(frozen=True)
class NonFiniteParams(HParams):
    """Skip steps whose gradients hold NaN or inf (``family.py``)."""

    skip_nonfinite: bool = param(False, boolean())


@dataclasses.dataclass(frozen=True)
class KerasParams(HParams):
    """The keywords of Keras' own ``Optimizer`` that every optimizer takes, checked as its
    constructor checks them (only :func:`check_arguments` uses this group)."""

    weight_decay: object = param(None, anything())
    clipnorm: object = param(None, anything())
    clipvalue: object = param(None, anything())
    global_clipnorm: object = param(None, anything())
    use_ema: object = param(False, anything())
    ema_momentum: object = param(0.99, anything())
    ema_overwrite_frequency: object = param(None, anything())
    loss_scale_factor: object = param(None, anything())
    gradient_accumulation_steps: object = param(None, anything())

    def validate(self) -> None:
        clips = [f"{n}={v!r}" for n, v in (("clipnorm", self.clipnorm),
                                            ("clipvalue", self.clipvalue),
                                            ("global_clipnorm", self.global_clipnorm))
                 if v is not None]
        if len(clips) > 1:
            raise ValueError(f"{', '.join(clips)}: set at most one of clipnorm, clipvalue and "
                             f"global_clipnorm")
        if self.gradient_accumulation_steps:
            checks.check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, 2)
        if self.use_ema:
            checks.check_real("ema_momentum", self.ema_momentum, 0.0, 1.0)
            if self.ema_overwrite_frequency:
                checks.check_int("ema_overwrite_frequency", self.ema_overwrite_frequency, 1)


def check_arguments(cls, kwargs: Mapping) -> None:
    """Check the keywords ``cls(learning_rate=..., **kwargs)`` would get, without building it;
    ``ValueError`` names the key, the value and what is allowed.

    A family optimizer: each of its groups (``HPARAMS``) checks its keys, and every other key
    is one of Keras' (``KerasParams``) or ``name``.  Another optimizer class (Keras' own):
    every key is a parameter of its signature; Keras' shared keywords are checked here, the
    class's own when it is built.
    """
    rest = {k: v for k, v in kwargs.items() if k != "learning_rate"}
    if isinstance(cls, type) and issubclass(cls, FamilyOptimizer):
        _, rest = hparams.split(rest, cls.HPARAMS)
        allowed = [n for group in cls.HPARAMS.values() for n in group.names()]
        allowed += [*KerasParams.names(), "name"]
    else:
        allowed = [n for n, p in inspect.signature(cls).parameters.items()
                   if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = sorted(set(rest) - set(allowed))
    if unknown:
        raise ValueError(f"{unknown[0]}={rest[unknown[0]]!r} is not a parameter of "
                         f"{cls.__name__}; allowed: {sorted(set(allowed) - {'learning_rate'})}")
    KerasParams(**{k: v for k, v in rest.items() if k in KerasParams.names()})


class _Field:
    """A read-only attribute served from the optimizer's parameter groups."""

    def __init__(self, group: str, name: str):
        self.group, self.name = group, name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(obj.hparams[self.group], self.name)


class FamilyOptimizer(keras.optimizers.Optimizer):
    """Base of the family: parameters declared once, ``skip_nonfinite`` (module docstring)."""

    #: ``{group name: HParams class}``; subclasses extend it (``{**Base.HPARAMS, ...}``).
    HPARAMS: dict = {"nonfinite": NonFiniteParams}
    #: Leading constructor arguments (before the group keywords) and their defaults.
    LEADING = (("learning_rate", 0.001),)
    DEFAULT_NAME = "family"
    #: ``slots`` names -> the family-wide state roles (``protocols.StatefulOptimizer``).
    STATE_ROLES: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for group, params in cls.HPARAMS.items():
            for name in params.names():
                own = getattr(cls, name, None)  # (a class may define its own accessor)
                if own is None or isinstance(own, _Field):
                    setattr(cls, name, _Field(group, name))
        head = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
                for n, d in cls.LEADING]
        tail = [inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY,
                                  default=cls.DEFAULT_NAME)]
        cls.__signature__ = hparams.signature(head, cls.HPARAMS, tail)

    def __init__(self, learning_rate=0.001, name=None, **kwargs):
        groups, rest = hparams.split(kwargs, self.HPARAMS)
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        super().__init__(learning_rate=learning_rate, name=name or self.DEFAULT_NAME, **rest)
        self.hparams = types.MappingProxyType(groups)  # (not a dict: Keras tracks dicts)
        self._skipped_steps = None

    def get_config(self):
        config = super().get_config()
        for group in self.hparams.values():
            config.update(group.as_dict())
        return config

    @property
    def model_variables(self) -> list:
        """The trainable variables the optimizer updates, in its order (after ``build``)."""
        return list(self._trainable_variables)

    def slots(self, index: int) -> dict:
        """The state of trainable variable ``index`` by name (each optimizer names its own)."""
        raise NotImplementedError(f"{type(self).__name__}.slots")

    # ------------------------------------------------------------ non-finite steps
    def build(self, var_list):
        super().build(var_list)
        if self.skip_nonfinite:
            self._skipped_steps = self.add_variable(
                (), "zeros", "int64", name="skipped_steps", aggregation="only_first_replica")

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for NaN/inf gradients (``skip_nonfinite``); 0 before the first."""
        if self._skipped_steps is None:
            return 0
        return int(ops.convert_to_numpy(self._skipped_steps))

    def apply(self, grads, trainable_variables=None):
        """Keras' ``apply``, unless ``skip_nonfinite`` finds a NaN/inf gradient."""
        if not self.skip_nonfinite or len(grads) == 0:
            return super().apply(grads, trainable_variables)
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            if not self.built:  # as the base's apply would, but outside the branch
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
                self.built = True
        base_apply = super().apply
        # (backends other than TensorFlow select every variable the step may assign)
        assigned = [*self.variables, *(trainable_variables or self._trainable_variables or [])]
        nonfinite.NonFiniteSkip(self._skipped_steps).apply(
            nonfinite.NonFiniteSkip.flags(grads), lambda g: base_apply(g, trainable_variables),
            (grads,), variables=assigned)

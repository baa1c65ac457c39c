"""``AdEMAMix``: Adam with a second, slow gradient EMA (Pagliardini, Ablin, Grangier, "The
AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025, arXiv 2409.03137, Algorithm 1).

Per variable ``x`` with gradient ``g``, at step ``t`` (1-based: ``iterations + 1``)::

    m1 <- beta_1 m1 + (1 - beta_1) g                     fast EMA, bias-corrected below
    m2 <- beta_3(t) m2 + (1 - beta_3(t)) g               slow EMA, not bias-corrected
    nu <- beta_2 nu + (1 - beta_2) g^2
    x  <- x - lr * ((m1 / (1 - beta_1^t) + alpha(t) m2) / (sqrt(nu / (1 - beta_2^t)) + eps)
                    + weight_decay * x)

Schedulers (the paper's, each off when its step count is ``None``)::

    alpha(t)  = alpha * min(t / alpha_warmup_steps, 1)                 linear from 0
    beta_3(t) = min(exp(ln(beta_1) ln(beta_3) /
                        ((1 - s) ln(beta_3) + s ln(beta_1))), beta_3),  s = min(t / T_b3, 1)

``beta_3(t)`` moves linearly in *half-life* space (the half-life of an EMA of
decay ``b`` is ``ln(1/2) / ln(b)``) from ``beta_1`` at ``t = 0`` to ``beta_3``
at ``t = beta_3_warmup_steps``.  Symbols map to the arguments of the same
names; ``weight_decay`` (decoupled, ``lr * weight_decay * x``, applied by the
Keras base class before the step, on the current ``x`` as in the paper) and
every other ``keras.optimizers.Optimizer`` keyword work as in Keras' AdamW.

NOTE (epsilon): as in Keras' Adam/AdamW, ``eps`` is added to ``sqrt(nu)``
before the bias correction (``lr sqrt(1 - beta_2^t)`` then scales the whole
step), i.e. the paper's ``eps`` times ``sqrt(1 - beta_2^t)``; so ``alpha=0``
is exactly ``keras.optimizers.AdamW`` with the same arguments.
NOTE (state): ``m1``, ``m2`` and ``nu`` are Keras slot variables of the
variable's shape and dtype; the step counts the optimizer's ``iterations``.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from nested_research.optimizers import sparse
from nested_research.optimizers.family import FamilyOptimizer
from nested_research.core.hparams import HParams, integer, param, real

_BETA = real(0.0, 1.0, high_open=True)


@dataclasses.dataclass(frozen=True)
class AdEMAMixParams(HParams):
    """AdEMAMix's parameters (Hydra: ``optimizer=ademamix``, ``optimizer.params.*``)."""

    beta_1: float = param(0.9, _BETA)
    beta_2: float = param(0.999, _BETA)
    beta_3: float = param(0.9999, _BETA)
    alpha: float = param(5.0, real(0.0))
    alpha_warmup_steps: int = param(None, integer(1, optional=True))
    beta_3_warmup_steps: int = param(None, integer(1, optional=True))
    epsilon: float = param(1e-8, real(0.0, low_open=True))

    def validate(self) -> None:
        if self.beta_3_warmup_steps is not None and self.beta_3 < self.beta_1:
            raise ValueError(f"beta_3={self.beta_3!r} must be >= beta_1={self.beta_1!r} when "
                             "beta_3_warmup_steps is set (beta_3 warms up from beta_1)")


def alpha_at(p: AdEMAMixParams, t):
    """``alpha(t)`` (module docstring); ``t`` a float tensor."""
    if p.alpha_warmup_steps is None:
        return p.alpha
    return p.alpha * ops.minimum(t / float(p.alpha_warmup_steps), 1.0)


def beta_3_at(p: AdEMAMixParams, t):
    """``beta_3(t)`` (module docstring); ``t`` a float tensor."""
    if p.beta_3_warmup_steps is None or p.beta_3 == p.beta_1:
        return p.beta_3
    log_start, log_end = math.log(p.beta_1), math.log(p.beta_3)
    s = ops.minimum(t / float(p.beta_3_warmup_steps), 1.0)
    beta = ops.exp(log_start * log_end / ((1.0 - s) * log_end + s * log_start))
    return ops.minimum(beta, p.beta_3)


@keras.saving.register_keras_serializable(package="nested_research")
class AdEMAMix(FamilyOptimizer):
    """Adam with a fast and a slow gradient EMA (module docstring), ``skip_nonfinite`` too."""

    HPARAMS = {"ademamix": AdEMAMixParams, **FamilyOptimizer.HPARAMS}
    DEFAULT_NAME = "ademamix"
    #: ``slots`` names -> the family-wide state roles (``state_norms.py``).
    STATE_ROLES = {"m1": "fast", "m2": "slow", "nu": "second"}

    def __init__(self, learning_rate=0.001, name=None, weight_decay=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=weight_decay,
                         **kwargs)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._m1, self._m2, self._nu = self.add_optimizer_variables(var_list, ["m1", "m2", "nu"])

    def update_step(self, gradient, variable, learning_rate):
        p = self.hparams["ademamix"]
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        # dense, in the variable's static shape: an Embedding's IndexedSlices (duplicate
        # rows summed) would otherwise meet Keras' row-wise sparse ops
        g = sparse.prepare_gradient(gradient, variable, dense_only=True)
        t = ops.cast(self.iterations + 1, dtype)
        idx = self._get_variable_index(variable)
        m1, m2, nu = self._m1[idx], self._m2[idx], self._nu[idx]
        beta_3 = beta_3_at(p, t)  # (Python floats stay Python floats: exact in float64 too)
        self.assign_add(m1, ops.multiply(ops.subtract(g, m1), 1.0 - p.beta_1))
        self.assign_add(m2, ops.multiply(ops.subtract(g, m2), 1.0 - beta_3))
        self.assign_add(nu, ops.multiply(ops.subtract(ops.square(g), nu), 1.0 - p.beta_2))
        # lr sqrt(bc2) (m1 / bc1 + alpha m2) / (sqrt(nu) + eps), written as Keras' Adam writes
        # its step, so that alpha = 0 is AdamW op for op (adding 0 * m2 is exact)
        bc1 = 1.0 - ops.power(p.beta_1, t)
        root = lr * ops.sqrt(1.0 - ops.power(p.beta_2, t))
        numerator = ops.add(ops.multiply(m1, root / bc1), ops.multiply(m2, root * alpha_at(p, t)))
        self.assign_sub(variable, ops.divide(numerator, ops.add(ops.sqrt(nu), p.epsilon)))

    def slots(self, index: int) -> dict:
        """The state of trainable variable ``index`` by name: ``m1``, ``m2``, ``nu``."""
        return {"m1": self._m1[index], "m2": self._m2[index], "nu": self._nu[index]}

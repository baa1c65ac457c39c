"""``DeltaMomentum``: momentum as an associative memory trained with an L2 regression inner loss
-- a delta-rule momentum (Behrouz, Razaviyayn, Zhong, Mirrokni, "Nested Learning: The Illusion
of Deep Learning Architectures", NeurIPS 2025, arXiv 2512.24695, Section 4.4, Eq. 48-49).

The paper reads heavy-ball momentum as a memory ``m`` trained by one gradient step per
optimizer step on a dot-product objective (a Hebbian update, blind to the memory's state);
replacing it by the L2 regression loss ``||m grad^T - P||^2`` gives (Eq. 48-49)::

    W_{i+1} = W_i + m_{i+1},
    m_{i+1} = m_i (alpha - grad^T grad) - eta P grad.

We implement it, per variable ``x`` with gradient ``g`` and learning rate ``lr``, as::

    G   = g as a (fan_in, units) matrix,  G_hat = G / ||G||_F     (0 where g = 0)
    m  <- momentum m - delta_rate (G_hat G_hat^T) m - lr P(g)
    x  <- x + m

``(G_hat G_hat^T) m`` erases, at rate ``delta_rate``, what the memory holds along the input
directions the current gradient spans (the delta rule's "replace the old value of this key"),
before the new gradient is written: a gradient-dependent decay of the momentum.  ``P`` is
the identity (``preconditioner="identity"``) or Adam's diagonal preconditioner
(``preconditioner="adam"``)::

    v <- beta_2 v + (1 - beta_2) g^2,   P(g) = sqrt(1 - beta_2^t) g / (sqrt(v) + eps)

Symbols map to arguments: ``alpha`` -> ``momentum`` (the forget gate of Eq. 47), ``eta`` ->
``learning_rate``, ``P`` -> ``preconditioner`` (with ``beta_2``, ``epsilon`` for ``"adam"``);
``delta_rate`` (the erase strength) has no symbol in the paper (see the NOTE on scale).
``delta_rate=0`` with the identity is ``keras.optimizers.SGD(momentum=momentum)`` op for op.
``weight_decay`` (decoupled, ``lr * weight_decay * x``, applied by the Keras base class
before the step) and every other ``keras.optimizers.Optimizer`` keyword work as in Keras.

NOTE (matrix form, key, value, query): ``m`` has the variable's shape, and Eq. 49 multiplies
it on the right by ``grad^T grad``: for the paper's ``(out, in)`` weight that is an
``(in, in)`` matrix, the gradient's Gram matrix over the layer's inputs (the gradient of
``||m grad^T - P||^2`` with respect to ``m`` is ``(m grad^T - P) grad``).  So the key is the
gradient ``G`` itself, the value ``-P`` (the write ``eta P G`` is value times key), and the
memory is read as a whole -- ``W <- W + m`` -- with no separate query.  In Keras' ``(in, out)``
layout the same product is ``(G G^T) m``, a ``(fan_in, fan_in)`` matrix on the left.  A conv
kernel ``(kh, kw, c_in, c_out)`` is the matrix ``(kh * kw * c_in, c_out)`` (its fan-in is the
patch); a bias or scale (rank 0 or 1) is a layer with the single input 1, whose normalised
key Gram matrix is 1: its momentum decays by ``momentum - delta_rate`` on steps where its
gradient is not all zero (by ``momentum`` otherwise).  Not elementwise: an elementwise reading
(each entry its own 1-D memory) would make ``grad^T grad`` the scalar ``g_j^2``.
NOTE (scale): as printed, ``alpha - grad^T grad`` has neither a step size nor a normalised
key: its eigenvalues ``alpha - sigma_k^2`` (``sigma_k`` the gradient's singular values) depend
on the loss's scale and go negative, then unbounded, once ``sigma_k^2 > alpha``.  We
normalise the key by its Frobenius norm (delta-rule memories use normalised keys; the paper's
Delta Gradient Descent also assumes them, Appendix C) and scale the erase by ``delta_rate``,
checked ``<= momentum``: the spectrum of ``momentum I - delta_rate G_hat G_hat^T`` is then
inside ``[momentum - delta_rate, momentum]`` (the Gram eigenvalues are in [0, 1], sum 1):
the decay never flips the memory's sign nor grows it, whatever the gradient's scale.
NOTE (preconditioning): the paper leaves ``P_i`` open (Eq. 47: "any reasonable choice",
e.g. a preconditioner); Eq. 49's erase uses the raw gradient as the key, so ``P`` only
scales the write.  We offer the identity (the default: Eq. 49 as heavy-ball momentum) and
Adam's second moment (the paper's Appendix B reading of Adam; ``eps`` added to ``sqrt(v)``
before the bias correction, as in Keras' Adam).
NOTE (learning rate): as in Eq. 48-49 and Keras' SGD, ``lr`` is inside the momentum, so a
learning-rate schedule scales the new writes, not the stored memory.
NOTE (defaults, measured on the default job -- MLP on the 8x8 digits, 10 epochs, test
accuracy): ``delta_rate=0.5`` reaches 0.836, 0.950, 0.961, 0.961, 0.939 at rates 3e-3, 1e-2,
3e-2, 1e-1, 3e-1; at the default 0.1, 0.966 averaged over seeds 0-3 (``delta_rate=0.9``:
0.970; 0, i.e. SGD: 0.961 at seed 0).  ``preconditioner="adam"`` wants Adam's rates: 0.958,
0.947 at 1e-3, 3e-3, and fails at 1e-2.
NOTE (state): ``momentum`` (``m``) and, for ``preconditioner="adam"``, ``velocity`` (``v``):
Keras slot variables of the variable's shape and dtype.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from nested_research.optimizers import sparse
from nested_research.optimizers.family import FamilyOptimizer
from nested_research.core.hparams import HParams, choice, param, real

PRECONDITIONERS = ("identity", "adam")


@dataclasses.dataclass(frozen=True)
class DeltaMomentumParams(HParams):
    """DeltaMomentum's parameters (Hydra: ``optimizer=delta_momentum``, ``optimizer.params.*``)."""

    momentum: float = param(0.9, real(0.0, 1.0, high_open=True))
    delta_rate: float = param(0.5, real(0.0, 1.0))
    preconditioner: str = param("identity", choice(PRECONDITIONERS))
    beta_2: float = param(0.999, real(0.0, 1.0, high_open=True))
    epsilon: float = param(1e-7, real(0.0, low_open=True))

    def validate(self) -> None:
        if self.delta_rate > self.momentum:
            raise ValueError(f"delta_rate={self.delta_rate!r} must be <= momentum="
                             f"{self.momentum!r} (else the momentum's decay can go negative)")


def key_projection(g, m):
    """``(G_hat G_hat^T) m`` in the variable's shape (module docstring; 0 where ``g`` is 0)."""
    m = ops.convert_to_tensor(m)  # (a variable: JAX's where and zeros_like take no Keras variable)
    if len(g.shape) < 2:  # a layer with the single input 1: the normalised Gram matrix is 1
        return ops.where(ops.sum(ops.square(g)) > 0, m, ops.zeros_like(m))
    shape = tuple(int(d) for d in g.shape)
    rows, cols = math.prod(shape[:-1]), shape[-1]
    key, mem = ops.reshape(g, (rows, cols)), ops.reshape(m, (rows, cols))
    sq = ops.sum(ops.square(key))
    inv = ops.where(sq > 0, 1.0 / ops.where(sq > 0, sq, 1.0), 0.0)
    if cols <= rows:  # K (K^T M): 2 rows cols^2 multiply-adds, else (K K^T) M: 2 rows^2 cols
        out = ops.matmul(key, ops.matmul(ops.transpose(key), mem))
    else:
        out = ops.matmul(ops.matmul(key, ops.transpose(key)), mem)
    return ops.reshape(out * inv, shape)


@keras.saving.register_keras_serializable(package="nested_research")
class DeltaMomentum(FamilyOptimizer):
    """Delta-rule momentum (module docstring), ``skip_nonfinite`` too."""

    HPARAMS = {"delta_momentum": DeltaMomentumParams, **FamilyOptimizer.HPARAMS}
    LEADING = (("learning_rate", 0.1),)
    DEFAULT_NAME = "delta_momentum"
    #: ``slots`` names -> the family-wide state roles (``state_norms.py``).
    STATE_ROLES = {"momentum": "fast", "velocity": "second"}

    def __init__(self, learning_rate=0.1, name=None, weight_decay=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=weight_decay,
                         **kwargs)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums = self.add_optimizer_variables(var_list, "momentum")
        self._velocities = [None] * len(var_list)
        if self.preconditioner == "adam":
            self._velocities = self.add_optimizer_variables(var_list, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        p = self.hparams["delta_momentum"]
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        # dense, in the variable's static shape (an Embedding's IndexedSlices included: the
        # key projection needs the whole matrix)
        g = sparse.prepare_gradient(gradient, variable, dense_only=True)
        idx = self._get_variable_index(variable)
        m = self._momentums[idx]
        write = g
        if p.preconditioner == "adam":
            v = self._velocities[idx]
            t = ops.cast(self.iterations + 1, dtype)
            self.assign_add(v, ops.multiply(ops.subtract(ops.square(g), v), 1.0 - p.beta_2))
            write = ops.divide(ops.multiply(g, ops.sqrt(1.0 - ops.power(p.beta_2, t))),
                               ops.add(ops.sqrt(v), p.epsilon))
        kept = ops.multiply(m, p.momentum)  # (a Python float: exact in float64 too)
        if p.delta_rate:
            kept = ops.subtract(kept, ops.multiply(key_projection(g, m), p.delta_rate))
        self.assign(m, ops.subtract(kept, ops.multiply(write, lr)))
        self.assign_add(variable, m)

    def slots(self, index: int) -> dict:
        """The state of trainable variable ``index`` by name: ``momentum``, ``velocity``
        (``preconditioner="adam"``, else ``None``)."""
        return {"momentum": self._momentums[index], "velocity": self._velocities[index]}

"""``M3``: Multi-scale Momentum Muon (Behrouz, Razaviyayn, Zhong, Mirrokni, "Nested Learning:
The Illusion of Deep Learning Architectures", NeurIPS 2025, arXiv 2512.24695, Section 7.2,
Algorithm 1): a fast and a slow momentum, each orthogonalised by Newton-Schulz, mixed and
divided by an Adam-style second moment.

Per matrix variable ``x`` (see "Which variables" below) with gradient ``g``, at step ``t``
(1-based: ``iterations + 1``)::

    M1 <- beta_1 M1 + (1 - beta_1) g                  fast memory, every step   (Alg. 1, l. 7)
    V  <- beta_2 V  + (1 - beta_2) g^2                second moment, every step (l. 8)
    S  <- S + g                                       this chunk's gradients
    O1  = NS_T(M1)                                    (l. 9)
    x  <- x - lr * (O1 + alpha O2) / (sqrt(V / (1 - beta_2^t)) + eps)              (l. 10)
    if t % f == 0:                                    end of a chunk of f steps     (l. 3-4)
        M2 <- beta_3 M2 + (1 - beta_3) S / f          slow memory, every f steps
        O2  = NS_T(M2);  S <- 0

``O2`` starts at 0, so the first ``f`` steps move by ``O1`` alone; a slow update made at
the end of step ``t`` acts from step ``t + 1`` on, as in Algorithm 1 (the slow memory is
updated at the start of each lower-frequency iteration, from the previous chunk's gradients).
``NS_T`` is Muon's quintic Newton-Schulz iteration, ``T = ns_steps`` times, with the
coefficients of ``keras.optimizers.Muon`` (``a, b, c = 3.4445, -4.7750, 2.0315``; input
scaled by ``1 / (||X||_F + 1e-7)``, a tall matrix transposed first): it maps a matrix to
(approximately) the orthogonal factor of its polar decomposition, singular values near 1.

Symbols map to arguments: ``beta_1``, ``beta_2``, ``beta_3`` (the paper's beta_1..3),
``alpha`` (weight of the slow memory), ``frequency`` (the paper's ``f``, the chunk size),
``ns_steps`` (``T``), ``epsilon`` (``eps``), ``learning_rate`` (``eta``).  ``weight_decay``
(decoupled, ``lr * weight_decay * x``, applied by the Keras base class before the step) and
every other ``keras.optimizers.Optimizer`` keyword work as in Keras' AdamW.

Which variables.  The Newton-Schulz path above takes every kernel of rank >= 2: a 2-D kernel
``(fan_in, units)`` as is, a conv kernel ``(kh, kw, c_in, c_out)`` (any rank >= 3) flattened
to ``(kh * kw * c_in, c_out)``.  Variables of rank 0 or 1 (biases, normalisation scales), and
by Keras Muon's convention the embeddings (``exclude_embeddings``: ``"embedding"`` in the
variable's path) and the variables whose path matches a regular expression of
``exclude_layers`` (Muon's way to keep the output layer out), take Adam's step, exactly
``keras.optimizers.Adam`` with the same ``beta_1``, ``beta_2``, ``epsilon`` (no slow memory)::

    m <- beta_1 m + (1 - beta_1) g;  v <- beta_2 v + (1 - beta_2) g^2
    x <- x - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + eps)

NOTE (conv kernels): ``keras.optimizers.Muon`` (Keras 3.15) does *not* reshape conv kernels:
it sends every variable that is not 2-D to its AdamW step (its own comment says flattening
"works well", and its Newton-Schulz would treat leading axes as a batch of matrices).  We
flatten instead, as the original Muon does for PyTorch's ``(out, in, kh, kw)`` kernels: the
Keras layout's equivalent keeps the output channels as columns, ``(kh * kw * c_in, c_out)``.
To give a conv kernel Adam's step instead, name it in ``exclude_layers``.
NOTE (fast memory and second moment): Algorithm 1 writes ``M1 <- M1 + beta_1 g`` and
``V <- V + beta_2 g^2`` -- accumulations with no decay.  The paper builds M3 by replacing the
momentum of its Adam-as-associative-memory formulation (Appendix B, Eq. 102), written in the
same accumulating notation and stated to be Adam (Eq. 105), says M3 "is the combination of
Adam, Muon and [CMS]", and requires ``1 > beta_1, beta_2, beta_3``; we read l. 7-8 as Adam's
exponential moving averages.  ``V`` averages the raw gradients (not the orthogonalised ones).
NOTE (slow memory): l. 3 writes ``M2 <- M2 + beta_3 sum_{i=(k-1)f}^{kf} g_i`` (Eq. 75 writes
the same with ``-`` and ``beta_2``; we follow Algorithm 1); we read it, like l. 7, as an
exponential moving average of the chunk's gradients, with decay ``beta_3`` per chunk, and
sum the chunk's ``f`` gradients (the range as written has ``f + 1`` terms, overlapping the
next chunk by one).  Dividing the sum by ``f`` only rescales ``M2``, and ``NS_T`` does not
see the scale (up to its 1e-7 guard): summing or averaging gives the same ``O2``.
NOTE (bias correction): ``NS_T`` does not see a positive scale, so ``M1`` and ``M2`` need no
bias correction; ``V`` is bias-corrected as in Adam.
NOTE (epsilon): as in Keras' Adam, ``eps`` is added to ``sqrt(V)`` before the bias correction
(``lr sqrt(1 - beta_2^t)`` then scales the whole step), i.e. the formula above's ``eps`` times
``sqrt(1 - beta_2^t)``; the Adam path is then Keras' Adam op for op.
NOTE (orthogonality): l. 10 divides ``O1 + alpha O2`` elementwise by ``sqrt(V) + eps``, so the
step of a kernel is orthogonal only where ``V`` is uniform; the division also makes the step
scale as ``1 / |g|`` (``O1`` has no scale: its entries are about ``1 / sqrt(max(rows, cols))``),
so per-entry steps are many times ``lr``: hence a default rate far below Adam's.
NOTE (epsilon is a hyperparameter here): Algorithm 1 calls ``eps`` numerical stability.  But
an entry whose gradient has been exactly 0 so far -- an input feature that is always 0, or
that was never non-zero while the ReLU unit fed by the entry was active -- has ``V = 0``, while Newton-Schulz spreads ``O1`` over the
whole matrix, so its step is ``lr O1 / eps``.  With ``eps = 1e-8`` the default job (MLP on
the 8x8 digits, whose inputs are sparse) diverges at every rate tried from 1e-2 down to 1e-6
(exploding steps at exactly those entries); ``eps`` bounds them.
NOTE (defaults, measured on that job: 10 epochs, test accuracy): ``eps = 1e-4`` reaches 0.975,
0.975, 0.914, 0.953, 0.931, 0.947 at rates 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2 (``eps = 1e-3``:
0.967 ... 0.936; ``1e-2``: 0.964 ... 0.936); the default rate 3e-5 averages 0.976 over seeds
0-3 (1e-4: 0.955; 1e-5: 0.90-0.93, under-trained).  ``alpha`` 0 / 0.5 / 2 at the defaults:
0.969 / 0.975 / 0.944 (train loss 0.099 / 0.003 / 0.0003); ``beta_3``, ``frequency`` untuned.
NOTE (state): ``m1``, ``v`` for every variable; ``m2``, ``o2`` (``NS_T(M2)``, kept so that the
slow memory is orthogonalised once a chunk, as in l. 4) and ``chunk`` (``S``) only for the
Newton-Schulz variables: Keras slot variables of the variable's shape and dtype.
"""

from __future__ import annotations

import dataclasses
import math
import re

import keras
from keras import ops

from nested_research.optimizers import sparse
from nested_research.optimizers.conditional import cond_assign
from nested_research.optimizers.family import FamilyOptimizer
from nested_research.core.hparams import HParams, boolean, integer, param, real

_BETA = real(0.0, 1.0, high_open=True)

#: ``keras.optimizers.Muon``'s quintic Newton-Schulz coefficients (its ``muon_a/b/c``).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def _patterns(name, value):
    """A list or tuple of regular expressions (strings), normalised to a tuple."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
            not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name}={value!r} must be a list of regular expressions (strings)")
    for v in value:
        try:
            re.compile(v)
        except re.error as err:
            raise ValueError(f"{name}={value!r} must be a list of regular expressions "
                             f"({v!r}: {err})") from None
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class M3Params(HParams):
    """M3's parameters (Hydra: ``optimizer=m3``, ``optimizer.params.*``)."""

    beta_1: float = param(0.9, _BETA)
    beta_2: float = param(0.999, _BETA)
    beta_3: float = param(0.9, _BETA)
    alpha: float = param(0.5, real(0.0))
    frequency: int = param(10, integer(1))
    ns_steps: int = param(5, integer(1))
    epsilon: float = param(1e-4, real(0.0, low_open=True))
    exclude_embeddings: bool = param(True, boolean())
    exclude_layers: tuple = param((), _patterns)


def matrix_shape(shape) -> tuple[int, int]:
    """The 2-D shape Newton-Schulz sees: ``(prod(shape[:-1]), shape[-1])`` (rank >= 2)."""
    shape = tuple(int(d) for d in shape)
    return math.prod(shape[:-1]), shape[-1]


def newton_schulz(x, steps: int):
    """``NS_T(x)`` for a 2-D ``x`` (module docstring), as ``keras.optimizers.Muon`` computes it."""
    a, b, c = NS_COEFFICIENTS
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = ops.transpose(x)
    x = x / (ops.sqrt(ops.sum(ops.square(x))) + 1e-7)
    for _ in range(steps):
        gram = ops.matmul(x, ops.transpose(x))
        x = a * x + ops.matmul(b * gram + c * ops.matmul(gram, gram), x)
    return ops.transpose(x) if tall else x


def orthogonalise(x, steps: int):
    """``NS_T`` of a kernel of rank >= 2, through its ``matrix_shape``, back in its shape."""
    return ops.reshape(newton_schulz(ops.reshape(x, matrix_shape(x.shape)), steps), x.shape)


@keras.saving.register_keras_serializable(package="nested_research")
class M3(FamilyOptimizer):
    """Multi-scale Momentum Muon (module docstring), ``skip_nonfinite`` too."""

    HPARAMS = {"m3": M3Params, **FamilyOptimizer.HPARAMS}
    LEADING = (("learning_rate", 3e-5),)
    DEFAULT_NAME = "m3"
    #: ``slots`` names -> the family-wide state roles (``state_norms.py``).
    STATE_ROLES = {"m1": "fast", "m2": "slow", "v": "second"}

    def __init__(self, learning_rate=3e-5, name=None, weight_decay=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=weight_decay,
                         **kwargs)

    def uses_newton_schulz(self, variable) -> bool:
        """Whether ``variable`` takes the Newton-Schulz path (else Adam's; module docstring)."""
        p = self.hparams["m3"]
        # (a Keras variable has a path; a backend tensor or an older Keras' variable a name)
        path = getattr(variable, "path", None) or str(getattr(variable, "name", ""))
        if len(variable.shape) < 2:
            return False
        if p.exclude_embeddings and "embedding" in path.lower():
            return False
        return not any(re.search(pattern, path) for pattern in p.exclude_layers)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._m1, self._v = self.add_optimizer_variables(var_list, ["m1", "v"])
        self._m2, self._o2, self._chunk = ([None] * len(var_list) for _ in range(3))
        for i, var in enumerate(var_list):
            if self._m1[i] is not None and self.uses_newton_schulz(var):
                self._m2[i], self._o2[i], self._chunk[i] = (
                    self.add_variable_from_reference(var, name=n) for n in ("m2", "o2", "chunk"))

    def update_step(self, gradient, variable, learning_rate):
        p = self.hparams["m3"]
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        # dense, in the variable's static shape: an Embedding's IndexedSlices (duplicate
        # rows summed) would otherwise meet Keras' row-wise sparse ops
        g = sparse.prepare_gradient(gradient, variable, dense_only=True)
        step = self.iterations + 1
        t = ops.cast(step, dtype)
        idx = self._get_variable_index(variable)
        m1, v = self._m1[idx], self._v[idx]
        self.assign_add(m1, ops.multiply(ops.subtract(g, m1), 1.0 - p.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(g), v), 1.0 - p.beta_2))
        root = lr * ops.sqrt(1.0 - ops.power(p.beta_2, t))
        if self._m2[idx] is None:  # Adam, as keras.optimizers.Adam writes its step
            alpha = root / (1.0 - ops.power(p.beta_1, t))
            self.assign_sub(variable, ops.divide(ops.multiply(m1, alpha),
                                                 ops.add(ops.sqrt(v), p.epsilon)))
            return
        m2, o2, chunk = self._m2[idx], self._o2[idx], self._chunk[idx]
        self.assign_add(chunk, g)
        numerator = orthogonalise(m1, p.ns_steps)
        if p.alpha:
            numerator = ops.add(numerator, ops.multiply(o2, p.alpha))
        self.assign_sub(variable, ops.divide(ops.multiply(numerator, root),
                                             ops.add(ops.sqrt(v), p.epsilon)))

        def slow_update():
            self.assign_add(m2, ops.multiply(ops.subtract(ops.multiply(chunk, 1.0 / p.frequency),
                                                          m2), 1.0 - p.beta_3))
            self.assign(o2, orthogonalise(m2, p.ns_steps))
            self.assign(chunk, ops.zeros_like(chunk))

        cond_assign(ops.equal(step % p.frequency, 0), slow_update, None, [m2, o2, chunk])

    def slots(self, index: int) -> dict:
        """The state of trainable variable ``index`` by name: ``m1``, ``v``, and for the
        Newton-Schulz variables ``m2``, ``o2`` (``NS_T(m2)``) and ``chunk`` (else ``None``)."""
        return {"m1": self._m1[index], "v": self._v[index], "m2": self._m2[index],
                "o2": self._o2[index], "chunk": self._chunk[index]}

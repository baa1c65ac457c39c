"""The continuum memory: three gradient EMAs, and the one retrieval that reads them.

Pure functions of tensors (``keras.ops``), no state: the optimizer owns the
variables and calls these.  Symbols, as in the seed README's "How It Works":

    g              gradient of one variable (after accumulation / compression)
    M = [M_s, M_m, M_l]   the three tiers, *stacked* on a trailing axis of 3
    d_s, d_m, d_l  their decays   (``short_term_decay`` ... ``long_term_decay``)
    w_s, w_m, w_l  retrieval weights
    mix            memory share of the effective gradient (``memory_mix``)

Every applied step::

    M_i'  = d_i M_i + (1 - d_i) g                            (``update_tiers``)
    w     = retrieve(sums of g and the tiers)                (``tier_sums``, ``retrieval_weights``)
    e     = (1 - mix) g + mix * sum_i w_i M_i'               (``effective``)

Retrieval, by ``memory_blend_mode`` (one function, ``retrieval_weights``, for
every mode and every path: dense, row-sparse, graph or XLA)::

    fixed:      w = (short_term_weight, medium_term_weight, long_term_weight)
    attention:  w = softmax_i(<g, M_i'> / sqrt(n)),  n = number of elements of g
                (the updated tiers, as the seed's "How It Works";
                ``attention_scoring="dot"``, the default)
                w = softmax_i(cos(g, M_i') / tau),  tau = ``attention_temperature``
                (``attention_scoring="cosine"``)
    adaptive:   w = softmax(a); the logits a take one ascent step on
                J(a) = sum_i softmax(a)_i c_i, c_i = cos(g, M_i) (0 for an empty tier):
                a <- clip(a + adaptive_rate * w * (c - <w, c>), -B, B)

so weight flows to the tier whose direction best predicted g; with bound ``B``
every adaptive weight lies in ``[1 / (1 + 2 e^{2B}), 1 / (1 + 2 e^{-2B})]``.

Why the tiers are one stacked variable ``(3,) + shape``: the optimizer
streams its whole state through memory, and XLA on CPU writes each output
tensor in a loop of its own, so three tier variables cost three passes where
one stack costs one (updated in place: each element depends on itself and
``g`` only); in graph mode the stack turns the per-tier ops into one op each.
Attention scores the updated tiers: the reduction then reads the stack after
its update, so XLA needs no copy of the old stack.  (The second moment stays
a variable of its own: a stack row computed from the other rows could not be
updated in place.)

NOTE: the seed leaves the adaptive rule unspecified; the rule above is ours.
NOTE: the seed's dot-product scores are near 0 in practice: ``<g, M_i'> / sqrt(n)``
is ``sqrt(n)`` times the mean product of two small numbers, so the softmax
returns 1/3 each (measured on the default digits job: weights 0.3334 / 0.3333 /
0.3333 and entropy 1.099 = ln 3 in every layer) and ``attention`` behaves as
``fixed`` at equal weights.  ``attention_scoring="cosine"`` scores by direction
only, on a scale set by ``attention_temperature``.  Its default, 0.25, comes
from the same job: there ``cos(g, M_short')`` is 0.26 to 0.71 by layer and the
medium and long cosines -0.07 to 0.09, so gaps of 0.3 to 0.7; tau = 0.25 turns
them into weight ratios of e^1.2 to e^2.8 (entropies 0.43 to 0.91), where tau =
0.1 all but one-hot selects the short tier (entropies 0.02 to 0.29).  Early
in training the cosine weights are near uniform too: without bias correction
every tier is a scaled sum of the same first gradients, so all three point
alike until their horizons separate (a few hundred steps on digits).  Ours,
not the seed's; the seed's scoring stays the default.
NOTE: the tiers are EMAs without bias correction, as in the seed: the long
tier (d_l = 0.9999) is tiny for its first thousands of steps, so attention and
fixed retrieval lean on the short and medium tiers early in training.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from keras import ops

from nested_research.core.hparams import HParams, choice, param, real
from nested_research.optimizers import sparse

TIERS = ("short", "medium", "long")
BLEND_MODES = ("fixed", "adaptive", "attention", "none")
ATTENTION_SCORINGS = ("dot", "cosine")
#: Bound on the adaptive logits (weights stay in about [1e-4, 1]).
ADAPTIVE_LOGIT_BOUND = 4.0
_COS_EPS = 1e-12
_DECAY = real(0.0, 1.0, high_open=True)
_WEIGHT = real(0.0)


@dataclasses.dataclass(frozen=True)
class MemoryParams(HParams):
    """The memory tiers and their retrieval (Hydra groups ``memory`` and ``blend_mode``)."""

    memory_blend_mode: str = param("attention", choice(BLEND_MODES))
    short_term_decay: float = param(0.94, _DECAY)
    medium_term_decay: float = param(0.994, _DECAY)
    long_term_decay: float = param(0.9999, _DECAY)
    short_term_weight: float = param(0.1, _WEIGHT)
    medium_term_weight: float = param(0.3, _WEIGHT)
    long_term_weight: float = param(0.6, _WEIGHT)
    memory_mix: float = param(0.5, real(0.0, 1.0))
    adaptive_rate: float = param(0.1, real(0.0))
    attention_scoring: str = param("dot", choice(ATTENTION_SCORINGS))
    attention_temperature: float = param(0.25, real(0.0, low_open=True))

    def validate(self) -> None:
        if sum(self.weights) <= 0:
            raise ValueError(f"short/medium/long_term_weight = {list(self.weights)}: at least "
                             "one weight must be > 0")

    @property
    def on(self) -> bool:
        return self.memory_blend_mode != "none"

    @property
    def uses_cosines(self) -> bool:
        """Whether retrieval needs ``<g, g>`` and the tier norms (``tier_sums(cosines=...)``)."""
        return self.memory_blend_mode == "adaptive" or (
            self.memory_blend_mode == "attention" and self.attention_scoring == "cosine")

    @property
    def decays(self) -> tuple[float, float, float]:
        return (self.short_term_decay, self.medium_term_decay, self.long_term_decay)

    @property
    def weights(self) -> tuple[float, float, float]:
        return (self.short_term_weight, self.medium_term_weight, self.long_term_weight)


def _column(values, like, rank: int):
    """``values`` (3 numbers) as a ``(3, 1, ..., 1)`` tensor that broadcasts against a stack."""
    return ops.convert_to_tensor(np.reshape(np.asarray(values), (3,) + (1,) * rank), like.dtype)


def update_tiers(tiers, g, decays: Sequence[float]):
    """``M_i' = M_i + (1 - d_i)(g - M_i)`` on the stacked tiers (shape ``(3,) + g.shape``)."""
    rate = _column([1.0 - d for d in decays], tiers, len(tiers.shape) - 1)
    return tiers + rate * (g - tiers)


def effective(g, new_tiers, w, memory_mix: float, fused: bool = False):
    """``(1 - mix) g + mix * sum_i w_i M_i'``; ``w`` a length-3 tensor or Python floats.

    ``fused=True`` writes the sum as elementwise terms, which XLA fuses into the
    passes that read it; otherwise one matrix product reads the stack once
    (TensorFlow graph mode, where every op is a pass).  The same sum.
    """
    if fused:
        combined = w[0] * new_tiers[0] + w[1] * new_tiers[1] + w[2] * new_tiers[2]
        return (1.0 - memory_mix) * g + memory_mix * combined
    shape = tuple(new_tiers.shape[1:])
    if None in shape:  # (the gathered rows of a row-sparse step)
        shape = ops.shape(new_tiers)[1:]
    c = ops.convert_to_tensor(np.asarray(w) * memory_mix, new_tiers.dtype) \
        if isinstance(w, (tuple, list)) else ops.cast(w, new_tiers.dtype) * memory_mix
    mixed = ops.matmul(ops.reshape(c, (1, 3)), ops.reshape(new_tiers, (3, -1)))
    return (1.0 - memory_mix) * g + ops.reshape(mixed, shape)  # (1 - mix) g + mix sum w_i M_i


def tier_sums(g, tiers, cosines: bool):
    """``(<g, g>, [<g, M_i>], [<M_i, M_i>])``: one matrix-vector product reads the stack and
    ``g`` once; ``<g, g>`` and the tier norms only for ``cosines`` (else ``None``).  A row-sparse
    ``g`` (``sparse.RowSparse``) reads only its rows of the stack; the tier norms still read the
    whole stack."""
    if isinstance(g, sparse.RowSparse):
        rows = ops.reshape(sparse.gather(tiers, g.indices, 1), (3, -1))
        dots = ops.reshape(ops.matmul(rows, ops.reshape(g.values, (-1, 1))), (3,))
        if not cosines:
            return None, dots, None
        return sparse.sq_norm(g), dots, ops.sum(ops.square(ops.reshape(tiers, (3, -1))), axis=1)
    n = int(math.prod(g.shape))
    flat = ops.reshape(g, (n, 1))
    rows = ops.reshape(tiers, (3, n))
    dots = ops.reshape(ops.matmul(rows, flat), (3,))
    if not cosines:
        return None, dots, None
    return ops.sum(ops.square(flat)), dots, ops.sum(ops.square(rows), axis=1)


def scores_updated_tiers(mode: str) -> bool:
    """Whether ``mode`` scores the tiers after the update (attention, as the seed does) or
    before it (adaptive: how well each tier predicted ``g``)."""
    return mode == "attention"


def retrieval_weights(p: MemoryParams, gg, dots, norms, n: int, logits=None):
    """The retrieval weights (module docstring) from ``tier_sums`` of the tiers the mode scores
    (``scores_updated_tiers``); returns ``(w, new_logits)``: ``w`` Python floats for
    ``fixed``, else a length-3 tensor; ``new_logits`` for ``adaptive`` (to be stored), else
    ``None``."""
    mode = p.memory_blend_mode
    if mode == "fixed":
        return p.weights, None
    if mode == "attention" and p.attention_scoring == "dot":
        return ops.softmax(dots / math.sqrt(max(n, 1))), None
    cos = dots / ops.maximum(ops.sqrt(gg) * ops.sqrt(norms), _COS_EPS)
    if mode == "attention":
        return ops.softmax(cos / p.attention_temperature), None
    logits = ops.cast(logits, dots.dtype)
    w = ops.softmax(logits)
    new = ops.clip(logits + p.adaptive_rate * w * (cos - ops.sum(w * cos)),
                   -ADAPTIVE_LOGIT_BOUND, ADAPTIVE_LOGIT_BOUND)
    return ops.softmax(new), new


def initial_adaptive_logits(weights: Sequence[float]) -> list[float]:
    """Logits whose softmax equals the normalised ``weights`` (zeros kept finite)."""
    total = float(sum(weights))
    return [math.log(max(w / total, 1e-6)) for w in weights]

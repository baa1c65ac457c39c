"""The continuum memory: three gradient EMAs and the rules that read them.

Pure functions of tensors (``keras.ops``), no state: the optimizer owns the
variables and calls these.  Symbols, as in the seed README's "How It Works":

    g              gradient of one variable (after accumulation / compression)
    M_s, M_m, M_l  short / medium / long term memory    (``memories``)
    d_s, d_m, d_l  their decays   (``short_term_decay`` ... ``long_term_decay``)
    w_s, w_m, w_l  retrieval weights                     (``weights``)
    mix            memory share of the effective gradient (``memory_mix``)

Memory update (every applied step)::

    M_i <- d_i * M_i + (1 - d_i) * g

Retrieval, by ``memory_blend_mode``::

    fixed:      w = (short_term_weight, medium_term_weight, long_term_weight)
    attention:  w = softmax_i( <g, M_i> / sqrt(n) ),  n = number of elements of g
    adaptive:   w = softmax(a), with logits a learned online (see below)

    combined = sum_i w_i * M_i
    effective = (1 - mix) * g + mix * combined

Adaptive rule.  Each variable keeps three logits ``a`` (initialised to the log
of the normalised fixed weights).  Before the memories see g, each tier is
scored by how well it predicted g, ``c_i = cos(g, M_i)`` (0 for an empty tier),
and the logits take one gradient-ascent step on the expected score
``J(a) = sum_i softmax(a)_i * c_i``::

    dJ/da_i = w_i * (c_i - sum_j w_j c_j)
    a <- clip(a + adaptive_rate * dJ/da, -adaptive_logit_bound, +adaptive_logit_bound)

so weight flows to the tier whose direction best predicts the next gradient.
The weights stay normalised (softmax) and bounded: with bound B every weight
lies in ``[1 / (1 + 2 e^{2B}), 1 / (1 + 2 e^{-2B})]``.

NOTE: the seed leaves the adaptive rule unspecified; the rule above is ours.
NOTE: the memories are EMAs without bias correction, as in the seed: the long
tier (d_l = 0.9999) is tiny for its first thousands of steps, so attention and
fixed retrieval lean on the short and medium tiers early in training.
"""

from __future__ import annotations

import math
from typing import Sequence

from keras import ops

TIERS = ("short", "medium", "long")
#: Default bound on the adaptive logits (weights stay in about [1e-4, 1]).
ADAPTIVE_LOGIT_BOUND = 4.0
_COS_EPS = 1e-12


def update_memories(memories: Sequence, gradient, decays: Sequence[float]) -> list:
    """``M_i <- d_i M_i + (1 - d_i) g`` for every tier."""
    return [m + (1.0 - d) * (gradient - m) for m, d in zip(memories, decays)]


def vdot(a, b):
    """Full inner product of two same-shaped tensors (a scalar)."""
    return ops.sum(a * b)


def attention_weights(gradient, memories: Sequence, num_elements: int):
    """``softmax_i(<g, M_i> / sqrt(n))`` as a length-3 vector."""
    scale = 1.0 / math.sqrt(max(num_elements, 1))
    scores = ops.stack([vdot(gradient, m) for m in memories]) * scale
    return ops.softmax(scores)


def cosines(gradient, memories: Sequence):
    """``cos(g, M_i)`` for each tier (0 where either vector is zero)."""
    g_norm = ops.sqrt(vdot(gradient, gradient))
    out = []
    for m in memories:
        m_norm = ops.sqrt(vdot(m, m))
        out.append(vdot(gradient, m) / ops.maximum(g_norm * m_norm, _COS_EPS))
    return ops.stack(out)


def adaptive_logits_step(logits, scores, rate: float, bound: float):
    """One ascent step on ``sum_i softmax(a)_i * c_i`` with clipped logits."""
    w = ops.softmax(logits)
    grad = w * (scores - ops.sum(w * scores))
    return ops.clip(logits + rate * grad, -bound, bound)


def initial_adaptive_logits(weights: Sequence[float]) -> list[float]:
    """Logits whose softmax equals the normalised ``weights`` (zeros kept finite)."""
    total = float(sum(weights))
    return [math.log(max(w / total, 1e-6)) for w in weights]


def combine(weights, memories: Sequence):
    """``sum_i w_i M_i`` (``weights`` is a length-3 vector or a sequence of floats)."""
    return sum(weights[i] * m for i, m in enumerate(memories))


def mix(gradient, combined, memory_mix: float):
    """``(1 - mix) g + mix * combined``."""
    return (1.0 - memory_mix) * gradient + memory_mix * combined

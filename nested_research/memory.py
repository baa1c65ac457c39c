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

Forms for speed (equal to the above up to float rounding; which one runs
where is ``NestedLearningOptimizer._apply``'s docstring).  Writing ``M_i`` for
the memories *before* the update, the retrieval after the update needs no pass
over the new memories::

    <g, M_i'> = d_i <g, M_i> + (1 - d_i) <g, g>                  (attention scores)
    effective = c_g g + sum_i c_i M_i,   c_i = mix w_i d_i,
                c_g = (1 - mix) + mix sum_i w_i (1 - d_i)

so one reduction pass (``<g, g>``, ``<g, M_i>``) and one elementwise pass that
reads ``g`` and the old memories and writes the new memories, the second
moment and the parameter give the whole step (``attention_weights_from_dots``,
``mix_coefficients`` / ``mix_row``, ``effective_from_old``).  For small
tensors the same sums are matrix products of ``[g; M_s; M_m; M_l]`` stacked
(``stack_rows`` ...), which takes a handful of ops instead of dozens.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from keras import ops

TIERS = ("short", "medium", "long")
#: Default bound on the adaptive logits (weights stay in about [1e-4, 1]).
ADAPTIVE_LOGIT_BOUND = 4.0
_COS_EPS = 1e-12


def update_memories(memories: Sequence, gradient, decays: Sequence[float]) -> list:
    """``M_i <- d_i M_i + (1 - d_i) g`` for every tier."""
    return [m + (1.0 - d) * (gradient - m) for m, d in zip(memories, decays)]


#: ``vdot(..., blocked=True)`` sums blocks of this many products first.
_BLOCK = 32


def vdot(a, b, blocked: bool = False):
    """Full inner product of two same-shaped tensors (a scalar).

    ``blocked=True`` gives the same number summed in another order, shaped for
    XLA on CPU: the products are summed in blocks of 32 (one fused, parallel
    pass that reads ``a`` and ``b`` once and writes n/32 partial sums), and the
    partial sums by a ``dot`` with ones.  (Under XLA on CPU a plain
    ``sum(a * b)`` writes the product to memory and reduces it in a separate
    tree-reduction pass, and a ``dot`` of two long vectors measured slower
    than the blocked form; the ``dot`` at the end keeps XLA from merging the
    two reductions back into one.)  In TensorFlow graph mode ``sum(a * b)``
    is the fast form.
    """
    n = int(math.prod(a.shape))
    if not blocked or n < 64 * _BLOCK or n % _BLOCK:
        return ops.sum(a * b) if not blocked else ops.vdot(a, b)
    partial = ops.sum(ops.reshape(a * b, (n // _BLOCK, _BLOCK)), axis=1)
    return ops.vdot(partial, ops.ones_like(partial))


def attention_weights(gradient, memories: Sequence, num_elements: int, blocked: bool = False):
    """``softmax_i(<g, M_i> / sqrt(n))`` as a length-3 vector."""
    scale = 1.0 / math.sqrt(max(num_elements, 1))
    scores = ops.stack([vdot(gradient, m, blocked) for m in memories]) * scale
    return ops.softmax(scores)


def attention_weights_from_dots(dots, decays: Sequence[float], num_elements: int):
    """``softmax_i(<g, M_i'> / sqrt(n))`` of the *updated* memories, as a ``(1, 3)`` row.

    ``dots`` is the ``(4, 1)`` column ``[<g,g>, <g,M_s>, <g,M_m>, <g,M_l>]`` of
    the memories *before* the update; ``<g, M_i'> = d_i <g, M_i> + (1 - d_i) <g, g>``
    is one ``(3, 4) @ (4, 1)`` product.
    """
    scale = 1.0 / math.sqrt(max(num_elements, 1))
    a = [[(1.0 - d) * scale] + [d * scale if j == i else 0.0 for j in range(3)]
         for i, d in enumerate(decays)]
    scores = ops.matmul(ops.convert_to_tensor(a, dots.dtype), dots)
    return ops.softmax(ops.reshape(scores, (1, 3)))


def mix_coefficients(weights: Sequence[float], decays: Sequence[float], memory_mix: float):
    """``(c_g, [c_s, c_m, c_l])`` with ``effective = c_g g + sum_i c_i M_i`` (old memories),
    for fixed (float) weights: Python floats, no tensor work at all."""
    c = [memory_mix * w * d for w, d in zip(weights, decays)]
    c_g = (1.0 - memory_mix) + memory_mix * sum(w * (1.0 - d) for w, d in zip(weights, decays))
    return c_g, c


def effective_from_old(gradient, memories: Sequence, c_g, coefficients: Sequence):
    """``c_g g + sum_i c_i M_i`` (terms whose coefficient is the float 0 are left out)."""
    out = gradient * c_g if not (isinstance(c_g, float) and c_g == 1.0) else gradient
    for c, m in zip(coefficients, memories):
        if isinstance(c, float) and c == 0.0:
            continue
        out = out + c * m
    return out


def cosines(gradient, memories: Sequence, blocked: bool = False):
    """``cos(g, M_i)`` for each tier (0 where either vector is zero)."""
    g_norm = ops.sqrt(vdot(gradient, gradient, blocked))
    out = []
    for m in memories:
        m_norm = ops.sqrt(vdot(m, m, blocked))
        out.append(vdot(gradient, m, blocked) / ops.maximum(g_norm * m_norm, _COS_EPS))
    return ops.stack(out)


def cosines_from_sums(grad_sq, mem_sq, grad_dot_mem):
    """``cosines`` from ``<g,g>`` (scalar), ``<M_i,M_i>`` and ``<g,M_i>`` (length-3 vectors)."""
    return grad_dot_mem / ops.maximum(ops.sqrt(grad_sq) * ops.sqrt(mem_sq), _COS_EPS)


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


# ---------------------------------------------------------------- small tensors
# For a tensor of a few thousand elements the step costs its number of ops, not
# its bytes.  These forms stack ``[g; M_s; M_m; M_l]`` once into a (4, n) matrix
# and do the reductions and the retrieval as matrix products of it (the same
# sums, in another order).

def stack_rows(gradient, memories: Sequence):
    """``(stacked, rows)``: ``[g, M_s, M_m, M_l]`` stacked (one copy of the four
    tensors), shape ``(4,) + g.shape``, and the same as a ``(4, n)`` matrix."""
    stacked = ops.stack([gradient] + list(memories))
    n = int(math.prod(gradient.shape))
    rows = stacked if len(stacked.shape) == 2 else ops.reshape(stacked, (stacked.shape[0], n))
    return stacked, rows


def stacked_dots(rows, gradient):
    """``[<g,g>, <g,M_s>, <g,M_m>, <g,M_l>]`` as a ``(4, 1)`` column (one matmul)."""
    return ops.matmul(rows, ops.reshape(gradient, (rows.shape[1], 1)))


def mix_row(weights, decays: Sequence[float], memory_mix: float, dtype):
    """``[[c_g, c_s, c_m, c_l]]`` (``mix_coefficients``) as a ``(1, 4)`` row.

    ``weights``: a ``(1, 3)`` row tensor (one ``(1, 3) @ (3, 4)`` product), or
    a sequence of floats (a constant row).
    """
    if isinstance(weights, (list, tuple)):
        c_g, c = mix_coefficients(weights, decays, memory_mix)
        return ops.convert_to_tensor([[c_g] + list(c)], dtype)
    m = [[memory_mix * (1.0 - d)] + [memory_mix * d if j == i else 0.0 for j in range(3)]
         for i, d in enumerate(decays)]
    base = ops.convert_to_tensor([[1.0 - memory_mix, 0.0, 0.0, 0.0]], dtype)
    return base + ops.matmul(weights, ops.convert_to_tensor(m, dtype))


def stacked_effective(row, rows, shape):
    """``row @ [g; M_s; M_m; M_l]`` in ``shape``: ``c_g g + sum_i c_i M_i``."""
    out = ops.matmul(row, rows)
    return out if tuple(out.shape) == tuple(shape) else ops.reshape(out, shape)


def stacked_update_memories(stacked, decays: Sequence[float]) -> list:
    """``M_i <- M_i + (1 - d_i)(g - M_i)`` on ``stack_rows``'s stack; the three new memories."""
    old = stacked[1:]
    rate = np.reshape(np.asarray([1.0 - d for d in decays]), (3,) + (1,) * (len(old.shape) - 1))
    rate = ops.convert_to_tensor(rate, stacked.dtype)
    return list(ops.unstack(old + rate * (stacked[:1] - old), 3))

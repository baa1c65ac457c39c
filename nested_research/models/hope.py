"""A Hope-style block: a self-modifying delta-rule memory (Titans / DGD update) followed by the
Continuum Memory System (:class:`~nested_research.models.cms.CMS`).

Block (input ``x`` of shape ``(batch, L, d)``, ``H = num_heads`` heads of width ``d / H``)::

    c_t     = sum_j conv[j] * x_{t - j}          causal depthwise conv, j < conv_size
    q_t     = normalize(c_t Wq),  k_t = normalize(c_t Wk)   (L2, per head)
    v_t     = c_t Wv
    eta_t   = sigmoid(c_t W_eta + b_eta)        step size, one per head, in (0, 1)
    alpha_t = sigmoid(c_t W_alpha + b_alpha)    decay, one per head, in (0, 1)
    M_t     = M_{t-1} (alpha_t I - eta_t k_t k_t^T) + eta_t v_t k_t^T,   M_0 = 0
    o_t     = M_t q_t                            write, then read (as gated DeltaNet)
    h_t     = x_t + Wo o_t
    y       = CMS(h)

``M_t`` is ``(d/H) x (d/H)`` per head and per sequence; it starts at zero for every sequence.
Equivalently ``M_t = alpha_t M_{t-1} + eta_t u_t k_t^T`` with the delta ``u_t = v_t - M_{t-1}
k_t``: one step of gradient descent with weight decay on ``1/2 ||M k_t - v_t||^2``.

Two exact forms of the memory.  ``chunk_size=None`` runs the token-by-token recurrence
(:func:`delta_rule_recurrent`).  ``chunk_size=C`` (:func:`delta_rule_chunked`) carries the
state across chunks of ``C`` tokens and is parallel inside a chunk.  With ``g_t`` the cumulative
sum of ``log alpha`` inside the chunk (``gamma_t = exp g_t``) and the chunk's initial state
``S``, unrolling gives::

    M_t = gamma_t S + sum_{s <= t} (gamma_t / gamma_s) eta_s u_s k_s^T
    u_t + sum_{s < t} (gamma_{t-1} / gamma_s) eta_s (k_s . k_t) u_s = v_t - gamma_{t-1} S k_t

a unit lower-triangular system ``(I + A) U = R`` solved for all the chunk's deltas at once
(``keras.ops.solve_triangular``); then ``o_t = gamma_t S q_t + sum_{s <= t} (gamma_t / gamma_s)
eta_s (k_s . q_t) u_s`` and the next chunk's state are matrix products.  No approximation is
made: the two forms agree to float32 round-off (the tests ask 1e-5).  A length that ``C`` does
not divide is padded after the end with ``k = q = v = 0``, ``eta = 0``, ``alpha = 1`` (an
identity step), which changes no earlier output; the padded outputs are dropped.

NOTE: in the paper's Hope the projections producing ``k, v, q, eta, alpha`` are themselves
memories updated in context (self-modifying Titans, each a small MLP with its own update).  Here
they are static linear projections learned by the outer loop; only ``M`` (and the CMS levels)
adapt in context.  This is the delta-rule / DGD memory the paper builds on, with the input-
generated step size and decay, not the full self-referential stack.

NOTE: the block has no normalisation layer of its own; a model stacking blocks adds its
pre-norm.  The outer gradient flows through the memory recurrence (both forms are ordinary
differentiable ``keras.ops`` programs); the CMS's ``stop_inner_gradient`` applies to the CMS.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from nested_research.core.checks import check_int, check_real
from nested_research.models.arguments import check_chunk_size
from nested_research.models.cms import CMS, _static_length

__all__ = ["HopeBlock", "delta_rule_recurrent", "delta_rule_chunked"]


def delta_rule_recurrent(q: Any, k: Any, v: Any, eta: Any, alpha: Any) -> Any:
    """Token by token.  ``q, k``: ``(N, L, dk)``; ``v``: ``(N, L, dv)``; ``eta, alpha``:
    ``(N, L)``.  Returns ``o``: ``(N, L, dv)`` with ``o_t = M_t q_t``."""
    length = int(k.shape[1])
    state = ops.zeros_like(ops.einsum("nv,nk->nvk", v[:, 0], k[:, 0]))
    outputs = []
    for t in range(length):
        kt, a, e = k[:, t], alpha[:, t, None, None], eta[:, t, None, None]
        recalled = ops.einsum("nvk,nk->nv", state, kt)
        state = a * state - e * ops.einsum("nv,nk->nvk", recalled, kt) \
            + e * ops.einsum("nv,nk->nvk", v[:, t], kt)
        outputs.append(ops.einsum("nvk,nk->nv", state, q[:, t]))
    return ops.stack(outputs, axis=1)


def delta_rule_chunked(q: Any, k: Any, v: Any, eta: Any, alpha: Any, chunk_size: int) -> Any:
    """The same memory, parallel inside chunks of ``chunk_size`` tokens (exact)."""
    length = int(k.shape[1])
    n = -(-length // chunk_size)
    pad = n * chunk_size - length
    log_alpha = ops.log(alpha)
    if pad:
        def padded(a):
            return ops.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (len(a.shape) - 2))
        q, k, v, eta, log_alpha = map(padded, (q, k, v, eta, log_alpha))
    c = chunk_size
    strict = ops.cast(ops.tril(ops.ones((c, c)), -1), k.dtype)
    inclusive = ops.cast(ops.tril(ops.ones((c, c))), k.dtype)
    eye = ops.cast(ops.eye(c), k.dtype)
    state = ops.zeros_like(ops.einsum("nv,nk->nvk", v[:, 0], k[:, 0]))
    outputs = []
    for i in range(n):
        sl = slice(i * c, (i + 1) * c)
        qc, kc, vc, ec, lc = q[:, sl], k[:, sl], v[:, sl], eta[:, sl], log_alpha[:, sl]
        g = ops.cumsum(lc, axis=1)                         # log gamma_t
        g_prev = g - lc                                    # log gamma_{t-1}
        # decay[t, s] = gamma_t / gamma_s (s <= t); decay_prev[t, s] = gamma_{t-1} / gamma_s
        decay = ops.exp(inclusive * (g[:, :, None] - g[:, None, :])) * inclusive
        decay_prev = ops.exp(strict * (g_prev[:, :, None] - g[:, None, :])) * strict
        kk = ops.einsum("ntk,nsk->nts", kc, kc)
        system = eye + decay_prev * kk * ec[:, None, :]
        rhs = vc - ops.exp(g_prev)[:, :, None] * ops.einsum("ntk,nvk->ntv", kc, state)
        u = ops.solve_triangular(system, rhs, lower=True)  # the chunk's deltas u_t
        eu = ec[:, :, None] * u
        qk = ops.einsum("ntk,nsk->nts", qc, kc)
        outputs.append(ops.exp(g)[:, :, None] * ops.einsum("ntk,nvk->ntv", qc, state)
                       + ops.einsum("nts,nsv->ntv", decay * qk, eu))
        to_end = ops.exp(g[:, -1:] - g)                    # gamma_C / gamma_s
        state = ops.exp(g[:, -1])[:, None, None] * state \
            + ops.einsum("ns,nsv,nsk->nvk", to_end, eu, kc)
    out = outputs[0] if n == 1 else ops.concatenate(outputs, axis=1)
    return out[:, :length]


def _l2_normalize(x: Any, eps: float = 1e-6) -> Any:
    return x * ops.rsqrt(ops.sum(x * x, axis=-1, keepdims=True) + eps)


@keras.saving.register_keras_serializable(package="nested_research")
class HopeBlock(keras.layers.Layer):
    """Self-modifying delta-rule memory followed by CMS (see the module docstring).

    Args:
        num_heads: memory heads ``H`` (the width ``d`` must be divisible by it).
        conv_size: taps of the causal depthwise convolution (1 = a per-channel scale).
        chunk_size: ``None`` for the token-by-token recurrence, or an integer >= 1 for the
            chunked form (same outputs).
        alpha_bias: initial bias of the decay gate (``sigmoid(3) ~ 0.95``: slow forgetting).
        cms_hidden_units, cms_chunk_sizes, cms_inner_learning_rates, cms_activation,
        stop_inner_gradient: the :class:`CMS` levels after the memory.
        kernel_initializer: initializer of the projections and the convolution.
    """

    def __init__(
        self,
        num_heads: int = 2,
        conv_size: int = 4,
        chunk_size: int | None = 16,
        alpha_bias: float = 3.0,
        cms_hidden_units: Any = (64,),
        cms_chunk_sizes: Any = (8,),
        cms_inner_learning_rates: Any = (1e-3,),
        cms_activation: str = "gelu",
        stop_inner_gradient: bool = False,
        kernel_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_heads = check_int("num_heads", num_heads, low=1)
        self.conv_size = check_int("conv_size", conv_size, low=1)
        self.chunk_size = check_chunk_size("chunk_size", chunk_size)
        self.alpha_bias = check_real("alpha_bias", alpha_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.cms = CMS(hidden_units=cms_hidden_units, chunk_sizes=cms_chunk_sizes,
                       inner_learning_rates=cms_inner_learning_rates, activation=cms_activation,
                       stop_inner_gradient=stop_inner_gradient,
                       kernel_initializer=kernel_initializer, name="cms")

    def build(self, input_shape: tuple) -> None:
        d = int(input_shape[-1])
        if d % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads!r} must divide the input width d={d}")
        init = self.kernel_initializer
        self.conv = self.add_weight(name="conv", shape=(self.conv_size, d), initializer=init)
        self.wq, self.wk, self.wv, self.wo = (
            self.add_weight(name=name, shape=(d, d), initializer=init)
            for name in ("wq", "wk", "wv", "wo"))
        self.w_eta = self.add_weight(name="w_eta", shape=(d, self.num_heads), initializer=init)
        self.b_eta = self.add_weight(name="b_eta", shape=(self.num_heads,), initializer="zeros")
        self.w_alpha = self.add_weight(name="w_alpha", shape=(d, self.num_heads),
                                       initializer=init)
        self.b_alpha = self.add_weight(
            name="b_alpha", shape=(self.num_heads,),
            initializer=keras.initializers.Constant(self.alpha_bias))
        self.cms.build(tuple(input_shape))

    def _heads(self, x: Any, length: int) -> Any:
        """``(B, L, H * dh)`` -> ``(B * H, L, dh)``."""
        x = ops.reshape(x, (-1, length, self.num_heads, int(x.shape[-1]) // self.num_heads))
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, length, int(x.shape[-1])))

    def projections(self, inputs: Any) -> tuple:
        """``(q, k, v, eta, alpha)`` per head, shaped ``(B * H, L, .)`` / ``(B * H, L)``."""
        length = _static_length(inputs, "HopeBlock")
        x = inputs
        conv = ops.cast(self.conv, x.dtype)
        padded = ops.pad(x, [(0, 0), (self.conv_size - 1, 0), (0, 0)])
        c = 0.0
        for j in range(self.conv_size):  # tap j multiplies x_{t - (conv_size - 1 - j)}
            c = c + padded[:, j:j + length] * conv[j]

        def proj(w):
            return ops.matmul(c, ops.cast(w, x.dtype))

        def gate(w, b):  # (B, L, H) -> (B * H, L)
            g = ops.sigmoid(proj(w) + ops.cast(b, x.dtype))
            return ops.reshape(ops.transpose(g, (0, 2, 1)), (-1, length))

        q = _l2_normalize(self._heads(proj(self.wq), length))
        k = _l2_normalize(self._heads(proj(self.wk), length))
        v = self._heads(proj(self.wv), length)
        return q, k, v, gate(self.w_eta, self.b_eta), gate(self.w_alpha, self.b_alpha)

    def memory(self, inputs: Any) -> Any:
        """``h = x + Wo o``: the input plus the memory's read-out (before the CMS)."""
        length = _static_length(inputs, "HopeBlock")
        q, k, v, eta, alpha = self.projections(inputs)
        if self.chunk_size is None:
            o = delta_rule_recurrent(q, k, v, eta, alpha)
        else:
            o = delta_rule_chunked(q, k, v, eta, alpha, self.chunk_size)
        dh = int(o.shape[-1])
        o = ops.transpose(ops.reshape(o, (-1, self.num_heads, length, dh)), (0, 2, 1, 3))
        o = ops.reshape(o, (-1, length, self.num_heads * dh))
        return inputs + ops.matmul(o, ops.cast(self.wo, inputs.dtype))

    def call(self, inputs: Any) -> Any:
        return self.cms(self.memory(inputs))

    def get_config(self) -> dict:
        config = super().get_config()
        cms = self.cms.get_config()
        config.update({
            "num_heads": self.num_heads,
            "conv_size": self.conv_size,
            "chunk_size": self.chunk_size,
            "alpha_bias": self.alpha_bias,
            "cms_hidden_units": cms["hidden_units"],
            "cms_chunk_sizes": cms["chunk_sizes"],
            "cms_inner_learning_rates": cms["inner_learning_rates"],
            "cms_activation": cms["activation"],
            "stop_inner_gradient": cms["stop_inner_gradient"],
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config

"""The Continuum Memory System (CMS) of Nested Learning, token mode: a chain of MLP levels whose
fast weights update in context, level ``l`` once every ``C(l)`` tokens.

Update rule (paper Sec. 7, Eq. 71, read along the tokens of one sequence)
-----------------------------------------------------------------------
The layer maps ``x`` of shape ``(batch, L, d)`` through ``k = len(hidden_units)`` levels, the
output of level ``l`` being the input of level ``l + 1``.  Level ``l`` (argument index ``l``) is
a residual MLP with hidden width ``h = hidden_units[l]`` and activation ``act``::

    y_t = x_t + W2 act(W1 x_t)          (row vectors: y_t = x_t + act(x_t @ W1) @ W2)

``W1`` (``d x h``) and ``W2`` (``h x d``) are the layer's trainable weights ``level{l}_w1``,
``level{l}_w2``; they are the *initial* fast weights ``W^(0)`` of every sequence.  With chunk
size ``C = chunk_sizes[l]`` and inner learning rate ``eta = inner_learning_rates[l]``, chunk
``c`` holds the positions ``[c C, (c + 1) C)`` and::

    W^(c+1) = W^(c) - eta * sum_{t in chunk c} grad_W l_t(W^(c))
    l_t(W)  = 1/2 || W2 act(W1 x_t) - x_t ||^2          (inner loss, per token)

Position ``t`` in chunk ``c`` reads with ``W^(c)``, the weights after the last *completed*
chunk, so no output depends on a later token (causal).  The state starts from the outer weights
for every sequence (it resets per sequence; the batch holds independent sequences, each with its
own fast weights).  ``C = None`` never updates the level in context (a plain residual MLP), and
``eta = 0`` leaves every level exactly the plain MLP.

NOTE: the paper states the chunked, summed update (Eq. 71) with a generic per-token error term
and leaves each level's in-context objective open.  The inner loss above is our reading: each
level is an auto-associative memory of its own input (keys = values = ``x_t``, the L2 objective
of Titans-style memories), so the levels memorise the context they see at their own frequency.
The gradients are written out in closed form (no autodiff inside the layer), so the layer runs
with ``keras.ops`` on every Keras backend.

NOTE: only ``W1`` and ``W2`` are fast weights; the levels have no biases (the paper's MLP form
``x + W1 sigma(W2 x)``, our ``W1``/``W2`` named in the order they are applied).

Partial last chunk.  When ``C`` does not divide ``L`` the tokens of the last, partial chunk are
read with the weights of the last completed chunk and their update is never applied: no later
token of the sequence would read it.  The number of updates applied to level ``l`` is
``floor(L / C)`` (0 for ``C = None``); ``call(x, return_state=True)`` also returns each level's
final fast weights and its update count.

Outer gradient.  By default the outer (training) gradient flows through the inner updates: the
inner gradients are differentiable functions of the outer weights, so the outer optimizer
meta-learns the initial weights *as they will be adapted* in context, as the paper trains its
memories' initial states end to end.  ``stop_inner_gradient=True`` wraps each inner gradient in
``stop_gradient`` (a first-order approximation, cheaper; the outer gradient still reaches the
initial weights through the reads).

Stability.  The step is a sum over ``C`` tokens, so it scales with ``eta * C * ||x||^2``; when
that is well above 1 the fast weights overshoot and grow from chunk to chunk (outputs in the
thousands after a few chunks).  Keep ``eta(l)`` about ``1 / (C(l) * E||x||^2)`` or smaller.

NOTE: the inner learning rates are fixed hyper-parameters here, not learned or generated from
the input; steps mode (levels updated by the outer optimizer at intervals) is not this layer.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from nested_research.core.checks import check_bool, check_choice, check_real
from nested_research.models.arguments import check_chunk_size, check_int_list, check_level_list

__all__ = ["CMS", "ACTIVATIONS", "activation_and_derivative"]

ACTIVATIONS = ("gelu", "relu", "silu", "tanh", "linear")


def activation_and_derivative(name: str, h: Any) -> tuple[Any, Any]:
    """``(act(h), act'(h))`` for the activations the inner gradient can differentiate."""
    if name == "relu":
        return ops.relu(h), ops.cast(h > 0, h.dtype)
    if name == "tanh":
        a = ops.tanh(h)
        return a, 1.0 - a * a
    if name == "silu":
        s = ops.sigmoid(h)
        return h * s, s * (1.0 + h * (1.0 - s))
    if name == "gelu":  # exact (erf) GELU: h Phi(h)
        cdf = 0.5 * (1.0 + ops.erf(h / math.sqrt(2.0)))
        pdf = ops.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)
        return h * cdf, cdf + h * pdf
    return h, ops.ones_like(h)


def _apply(x: Any, w: Any, shared: str, per_sequence: str) -> Any:
    """``x @ w`` with ``w`` either the shared outer weight or a per-sequence fast weight."""
    return ops.einsum(shared if len(w.shape) == 2 else per_sequence, x, w)


def _static_length(inputs: Any, who: str) -> int:
    if len(inputs.shape) != 3 or inputs.shape[1] is None or inputs.shape[-1] is None:
        raise ValueError(f"inputs.shape={tuple(inputs.shape)!r} must be (batch, L, d) with a "
                         f"static sequence length L and width d ({who} loops over its chunks)")
    return int(inputs.shape[1])


@keras.saving.register_keras_serializable(package="nested_research")
class CMS(keras.layers.Layer):
    """Continuum Memory System: residual MLP levels with in-context fast weights.

    Args:
        hidden_units: hidden width of each level; its length is the number of levels ``k``.
        chunk_sizes: ``C(l)`` per level, an integer >= 1 or ``None`` (never updated in
            context).  Same length as ``hidden_units``.
        inner_learning_rates: ``eta(l)`` per level, a number >= 0.  Same length.
        activation: one of :data:`ACTIVATIONS`.
        stop_inner_gradient: if True the outer gradient does not flow through the inner
            gradients (see the module docstring).
        kernel_initializer: initializer of the outer weights ``W1``, ``W2``.
    """

    def __init__(
        self,
        hidden_units: Any = (64, 64),
        chunk_sizes: Any = (1, 4),
        inner_learning_rates: Any = (1e-3, 1e-3),
        activation: str = "gelu",
        stop_inner_gradient: bool = False,
        kernel_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hidden_units = check_int_list("hidden_units", hidden_units)
        levels = len(self.hidden_units)
        self.chunk_sizes = check_level_list(
            "chunk_sizes", chunk_sizes, levels, "an integer >= 1 or None",
            lambda v: check_chunk_size("chunk_sizes", v))
        self.inner_learning_rates = check_level_list(
            "inner_learning_rates", inner_learning_rates, levels, "a number >= 0",
            lambda v: check_real("inner_learning_rates", v, low=0.0))
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.stop_inner_gradient = check_bool("stop_inner_gradient", stop_inner_gradient)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.w1: list = []
        self.w2: list = []

    @property
    def levels(self) -> int:
        return len(self.hidden_units)

    def build(self, input_shape: tuple) -> None:
        d = int(input_shape[-1])
        self.w1, self.w2 = [], []
        for i, h in enumerate(self.hidden_units):
            self.w1.append(self.add_weight(name=f"level{i}_w1", shape=(d, h),
                                           initializer=self.kernel_initializer))
            self.w2.append(self.add_weight(name=f"level{i}_w2", shape=(h, d),
                                           initializer=self.kernel_initializer))

    def updates_per_level(self, length: int) -> tuple[int, ...]:
        """The number of in-context updates each level applies over a sequence of ``length``."""
        return tuple(0 if c is None else length // c for c in self.chunk_sizes)

    def call(self, inputs: Any, return_state: bool = False) -> Any:
        length = _static_length(inputs, "CMS")
        x = inputs
        states = []
        for i in range(self.levels):
            x, state = self._level(x, length, i)
            states.append(state)
        return (x, states) if return_state else x

    def _level(self, x: Any, length: int, i: int) -> tuple[Any, tuple]:
        """One level over the whole sequence: ``(outputs, (W1_final, W2_final, updates))``."""
        w1 = ops.cast(self.w1[i], x.dtype)
        w2 = ops.cast(self.w2[i], x.dtype)
        chunk = self.chunk_sizes[i] or length
        eta = self.inner_learning_rates[i]
        outputs, updates = [], 0
        for start in range(0, length, chunk):
            xc = x[:, start:start + chunk]
            hc = _apply(xc, w1, "btd,dh->bth", "btd,bdh->bth")
            a, da = activation_and_derivative(self.activation, hc)
            branch = _apply(a, w2, "bth,hd->btd", "bth,bhd->btd")
            outputs.append(xc + branch)
            complete = start + chunk <= length
            if self.chunk_sizes[i] is None or not complete:
                continue
            err = branch - xc  # d l_t / d branch_t for l_t = 1/2 ||branch_t - x_t||^2
            g2 = ops.einsum("bth,btd->bhd", a, err)
            back = _apply(err, w2, "btd,hd->bth", "btd,bhd->bth") * da
            g1 = ops.einsum("btd,bth->bdh", xc, back)
            if self.stop_inner_gradient:
                g1, g2 = ops.stop_gradient(g1), ops.stop_gradient(g2)
            w1 = w1 - eta * g1
            w2 = w2 - eta * g2
            updates += 1
        y = outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=1)
        return y, (w1, w2, updates)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({
            "hidden_units": list(self.hidden_units),
            "chunk_sizes": list(self.chunk_sizes),
            "inner_learning_rates": list(self.inner_learning_rates),
            "activation": self.activation,
            "stop_inner_gradient": self.stop_inner_gradient,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config

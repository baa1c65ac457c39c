"""The Hope model: token and position embeddings (as the Transformer's), a stack of
:class:`~nested_research.models.hope.HopeBlock` layers, a final norm and per-position logits.

Block ``i``::

    x = block{i}_hope(block{i}_ln(x))

A ``HopeBlock`` is residual inside (``h = n + Wo o`` around the delta-rule memory, then the CMS
levels ``y = h + W2 act(W1 h)``), so the model feeds it the normalised stream ``n = ln(x)`` and
takes its output as the next stream (the norm sits on the skip path too; a second skip around
the block would add ``x + n``).  There is no attention: the memory ``M`` (one
``d/H x d/H`` matrix per head, written every token) and the CMS levels are the only context.

Equal size.  Per block with the defaults (``d_model=64``, 4 heads, ``conv_size=4``, two CMS
levels of 64): ``q, k, v, o`` projections ``4 * 64 * 64``, convolution ``4 * 64``, the step-size
and decay gates ``2 * (64 * 4 + 4)``, CMS ``2 * 2 * 64 * 64`` and the norm ``128``: 33,672
weights, against 33,472 for a Transformer block (``ff_dim=128``).

``memory_chunk_size`` picks the memory's form: an integer for the exact chunked form (parallel
inside a chunk; any size, a chunk longer than the sequence is one padded chunk), ``None`` for
the token-by-token recurrence (same outputs, slower).  For the nested optimizer's depth schedule
each ``HopeBlock`` (memory and CMS) is one weighted layer.
"""

from __future__ import annotations

from typing import Any

import keras

from nested_research.core.checks import check_bool, check_choice, check_int, check_real
from nested_research.models.arguments import check_chunk_size, check_cms_levels, check_model_name
from nested_research.models.cms import ACTIVATIONS
from nested_research.models.hope import HopeBlock
from nested_research.models.transformer import (
    check_sequence_args,
    check_width_and_heads,
    token_head,
    token_stem,
)

__all__ = ["build_hope"]


def build_hope(
    input_shape: tuple,
    num_classes: int,
    vocab_size: int,
    d_model: int = 64,
    num_heads: int = 4,
    num_layers: int = 2,
    conv_size: int = 4,
    memory_chunk_size: int | None = 16,
    alpha_bias: float = 3.0,
    hidden_units: Any = (64, 64),
    chunk_sizes: Any = (2, 8),
    inner_learning_rates: Any = (1e-3, 2.5e-4),
    activation: str = "gelu",
    stop_inner_gradient: bool = False,
    output_positions: int = 0,
    name: str = "hope",
) -> keras.Model:
    """A stack of Hope blocks (delta-rule memory + CMS) over token ids.

    Args:
        input_shape, num_classes, vocab_size, d_model, output_positions, name: as
            :func:`build_transformer`.
        num_heads: memory heads (``d_model`` must be divisible by it).
        num_layers: number of Hope blocks (>= 1).
        conv_size: taps of each block's causal depthwise convolution (>= 1).
        memory_chunk_size: the memory's chunk (an integer >= 1) or ``None`` (token by token).
        alpha_bias: initial bias of the decay gate.
        hidden_units, chunk_sizes, inner_learning_rates, activation, stop_inner_gradient: the
            CMS levels of every block, as :func:`build_cms_transformer`.

    Returns:
        An uncompiled functional model mapping ``(batch, L)`` int32 tokens to
        ``(batch, L, num_classes)`` logits (``output_positions`` of them when > 0).
    """
    seq_len, output_positions = check_sequence_args(input_shape, num_classes, output_positions)
    vocab_size = check_int("vocab_size", vocab_size, low=1)
    d_model, num_heads = check_width_and_heads(d_model, num_heads)
    num_layers = check_int("num_layers", num_layers, low=1)
    conv_size = check_int("conv_size", conv_size, low=1)
    memory_chunk_size = check_chunk_size("memory_chunk_size", memory_chunk_size)
    alpha_bias = check_real("alpha_bias", alpha_bias)
    hidden_units, chunk_sizes, inner_learning_rates = check_cms_levels(
        hidden_units, chunk_sizes, inner_learning_rates, seq_len)
    activation = check_choice("activation", activation, ACTIVATIONS)
    stop_inner_gradient = check_bool("stop_inner_gradient", stop_inner_gradient)
    name = check_model_name(name)

    inputs, x = token_stem(seq_len, vocab_size, d_model)
    for i in range(num_layers):
        p = f"block{i}_"
        n = keras.layers.LayerNormalization(epsilon=1e-5, name=p + "ln")(x)
        x = HopeBlock(num_heads=num_heads, conv_size=conv_size, chunk_size=memory_chunk_size,
                      alpha_bias=alpha_bias, cms_hidden_units=hidden_units,
                      cms_chunk_sizes=chunk_sizes, cms_inner_learning_rates=inner_learning_rates,
                      cms_activation=activation, stop_inner_gradient=stop_inner_gradient,
                      name=p + "hope")(n)
    return keras.Model(inputs, token_head(x, seq_len, num_classes, output_positions), name=name)

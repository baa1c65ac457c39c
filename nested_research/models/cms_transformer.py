"""The CMS Transformer: :func:`build_transformer`'s decoder with each block's MLP replaced by a
Continuum Memory System layer (:class:`~nested_research.models.cms.CMS`, token mode).

Block ``i`` (pre-norm, as the Transformer's)::

    h = x + block{i}_attn(block{i}_ln1(x))          # block{i}_add1
    y = block{i}_cms(block{i}_ln2(h)) - block{i}_ln2(h) + h   # block{i}_add2

The CMS is residual inside (each level ``y = x + W2 act(W1 x)``), so the block adds only its
change, ``cms(n) - n`` with ``n = ln2(h)``, to the residual stream (``block{i}_cms_delta``):
with every inner learning rate 0 and one level this is exactly the Transformer's MLP without
biases.  The levels' fast weights update along the tokens of each sequence, level ``l`` every
``chunk_sizes[l]`` tokens with its ``inner_learning_rates[l]`` (reads use the weights of the last
completed chunk, so the model stays causal).

Equal size.  With the defaults (two levels of width 64, ``d_model=64``) a CMS holds
``2 * 2 * 64 * 64 = 16384`` weights, the Transformer's MLP (``ff_dim=128``) ``16576``.

For the nested optimizer's depth schedule the ``CMS`` layer is one weighted layer (all its
levels share its depth: ``optimizers/nested/depths.py`` treats a layer that owns sublayers or
several weights as one unit); per-level intervals over optimizer steps are a
``layer_update_intervals`` pattern on ``block{i}_cms/level{l}_``.
"""

from __future__ import annotations

from typing import Any

import keras

from nested_research.core.checks import check_bool, check_choice, check_int
from nested_research.models.arguments import check_cms_levels, check_dropout, check_model_name
from nested_research.models.cms import ACTIVATIONS, CMS
from nested_research.models.transformer import (
    attention_sublayer,
    check_sequence_args,
    check_width_and_heads,
    token_head,
    token_stem,
)

__all__ = ["build_cms_transformer"]


def build_cms_transformer(
    input_shape: tuple,
    num_classes: int,
    vocab_size: int,
    d_model: int = 64,
    num_heads: int = 4,
    num_layers: int = 2,
    hidden_units: Any = (64, 64),
    chunk_sizes: Any = (2, 8),
    inner_learning_rates: Any = (1e-3, 2.5e-4),
    activation: str = "gelu",
    stop_inner_gradient: bool = False,
    dropout: float = 0.0,
    causal: bool = True,
    output_positions: int = 0,
    name: str = "cms_transformer",
) -> keras.Model:
    """Pre-norm Transformer whose blocks use a token-mode CMS in place of the MLP.

    Args:
        input_shape, num_classes, vocab_size, d_model, num_heads, num_layers, dropout, causal,
            output_positions, name: as :func:`build_transformer` (``dropout`` applies to the
            embeddings and the attention weights).
        hidden_units: hidden width of each CMS level; its length is the number of levels.
        chunk_sizes: per level, the tokens between in-context updates: an integer in
            ``[1, L]`` or ``None`` (never updated in context).
        inner_learning_rates: per level, the in-context learning rate (>= 0).
        activation: the levels' activation, one of ``cms.ACTIVATIONS``.
        stop_inner_gradient: stop the outer gradient at the inner updates (see ``cms.py``).

    Returns:
        An uncompiled functional model mapping ``(batch, L)`` int32 tokens to
        ``(batch, L, num_classes)`` logits (``output_positions`` of them when > 0).
    """
    seq_len, output_positions = check_sequence_args(input_shape, num_classes, output_positions)
    vocab_size = check_int("vocab_size", vocab_size, low=1)
    d_model, num_heads = check_width_and_heads(d_model, num_heads)
    num_layers = check_int("num_layers", num_layers, low=1)
    hidden_units, chunk_sizes, inner_learning_rates = check_cms_levels(
        hidden_units, chunk_sizes, inner_learning_rates, seq_len)
    activation = check_choice("activation", activation, ACTIVATIONS)
    stop_inner_gradient = check_bool("stop_inner_gradient", stop_inner_gradient)
    dropout = check_dropout(dropout)
    causal = check_bool("causal", causal)
    name = check_model_name(name)

    inputs, x = token_stem(seq_len, vocab_size, d_model, dropout)
    for i in range(num_layers):
        p = f"block{i}_"
        x = attention_sublayer(x, p, num_heads, dropout, causal)
        n = keras.layers.LayerNormalization(epsilon=1e-5, name=p + "ln2")(x)
        y = CMS(hidden_units=hidden_units, chunk_sizes=chunk_sizes,
                inner_learning_rates=inner_learning_rates, activation=activation,
                stop_inner_gradient=stop_inner_gradient, name=p + "cms")(n)
        delta = keras.layers.Subtract(name=p + "cms_delta")([y, n])
        x = keras.layers.Add(name=p + "add2")([x, delta])
    return keras.Model(inputs, token_head(x, seq_len, num_classes, output_positions), name=name)

"""The decoder-style (GPT-like) pre-norm transformer and its position embedding.

:func:`build_transformer` maps int token ids ``(batch, L)`` to per-position
logits ``(batch, L, num_classes)``; :class:`PositionEmbedding` is the learned
position embedding it adds to the token embedding (registered for ``.keras``
saving as ``nested_research>PositionEmbedding``).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from nested_research.core.checks import check_bool, check_int
from nested_research.models.arguments import (check_dropout, check_input_shape, check_model_name,
                                              check_num_classes)

__all__ = [
    "PositionEmbedding",
    "attention_sublayer",
    "build_transformer",
    "check_sequence_args",
    "check_width_and_heads",
    "token_head",
    "token_stem",
]


@keras.saving.register_keras_serializable(package="nested_research")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding to a ``(batch, L, d)`` input.

    Holds one trainable ``embeddings`` matrix of shape ``(max_length, d)``;
    inputs shorter than ``max_length`` use its first ``L`` rows.
    """

    def __init__(
        self,
        max_length: int,
        embeddings_initializer: Any = "random_normal",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_length = check_int("max_length", max_length, low=1)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape: tuple) -> None:
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.max_length, int(input_shape[-1])),
            initializer=self.embeddings_initializer,
            trainable=True,
        )

    def call(self, inputs: Any) -> Any:
        length = ops.shape(inputs)[-2]
        pos = self.embeddings[:length]
        return inputs + ops.cast(pos, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "max_length": self.max_length,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config


def build_transformer(
    input_shape: tuple,
    num_classes: int,
    vocab_size: int,
    d_model: int = 64,
    num_heads: int = 4,
    num_layers: int = 2,
    ff_dim: int = 128,
    dropout: float = 0.0,
    causal: bool = True,
    output_positions: int = 0,
    name: str = "transformer",
) -> keras.Model:
    """Pre-norm transformer giving per-position logits over ``num_classes``.

    Args:
        input_shape: ``(L,)``; inputs are int32 token ids in ``[0, vocab_size)``.
        num_classes: size of the per-position output vocabulary (>= 2).
        vocab_size: number of input token ids (>= 1).
        d_model: model width (>= 1, divisible by ``num_heads``).
        num_heads: attention heads (>= 1).
        num_layers: number of transformer blocks (>= 1).
        ff_dim: hidden width of each block's MLP (>= 1).
        dropout: dropout rate (embeddings, attention weights, MLP), in [0, 1).
        causal: if True each position attends only to itself and earlier
            positions.
        output_positions: if > 0, only the last ``output_positions``
            positions get logits (e.g. the query positions of associative
            recall); 0 keeps every position.
        name: model name.

    Returns:
        An uncompiled functional model mapping ``(batch, L)`` int32 tokens to
        ``(batch, L, num_classes)`` logits.
    """
    seq_len, output_positions = check_sequence_args(input_shape, num_classes, output_positions)
    vocab_size = check_int("vocab_size", vocab_size, low=1)
    d_model, num_heads = check_width_and_heads(d_model, num_heads)
    num_layers = check_int("num_layers", num_layers, low=1)
    ff_dim = check_int("ff_dim", ff_dim, low=1)
    dropout = check_dropout(dropout)
    causal = check_bool("causal", causal)
    name = check_model_name(name)

    inputs, x = token_stem(seq_len, vocab_size, d_model, dropout)
    for i in range(num_layers):
        p = f"block{i}_"
        x = attention_sublayer(x, p, num_heads, dropout, causal)
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=p + "ln2")(x)
        h = keras.layers.Dense(ff_dim, activation="gelu", name=p + "mlp1")(h)
        h = keras.layers.Dense(d_model, name=p + "mlp2")(h)
        if dropout > 0.0:
            h = keras.layers.Dropout(dropout, name=p + "mlp_dropout")(h)
        x = keras.layers.Add(name=p + "add2")([x, h])

    return keras.Model(inputs, token_head(x, seq_len, num_classes, output_positions), name=name)


def check_sequence_args(input_shape: Any, num_classes: Any, output_positions: Any) -> tuple:
    """``(L, output_positions)`` for a model over ``(L,)`` token ids (and ``num_classes``)."""
    (seq_len,) = check_input_shape(input_shape, (1,), "(L,) token ids")
    check_num_classes(num_classes)
    # At most the sequence length L = input_shape[0].
    return seq_len, check_int("output_positions", output_positions, 0, seq_len)


def check_width_and_heads(d_model: Any, num_heads: Any) -> tuple[int, int]:
    """``d_model`` and ``num_heads``: integers >= 1, the width divisible by the heads."""
    d_model = check_int("d_model", d_model, low=1)
    num_heads = check_int("num_heads", num_heads, low=1)
    if d_model % num_heads != 0:
        raise ValueError(
            f"d_model={d_model!r} must be divisible by num_heads={num_heads!r}"
            f" (d_model % num_heads = {d_model % num_heads})"
        )
    return d_model, num_heads


def token_stem(seq_len: int, vocab_size: int, d_model: int, dropout: float = 0.0) -> tuple:
    """``(inputs, x)``: the ``tokens`` input, ``embed`` + ``pos_embed`` (+ ``embed_dropout``)."""
    inputs = keras.Input(shape=(seq_len,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab_size, d_model, name="embed")(inputs)
    x = PositionEmbedding(seq_len, name="pos_embed")(x)
    if dropout > 0.0:
        x = keras.layers.Dropout(dropout, name="embed_dropout")(x)
    return inputs, x


def token_head(x: Any, seq_len: int, num_classes: int, output_positions: int) -> Any:
    """``final_ln``, the kept positions (``output_positions``, 0: all) and the ``logits``."""
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_ln")(x)
    if output_positions:
        x = keras.layers.Cropping1D((seq_len - output_positions, 0), name="output_positions")(x)
    return keras.layers.Dense(int(num_classes), name="logits")(x)


def attention_sublayer(x: Any, prefix: str, num_heads: int, dropout: float,
                       causal: bool) -> Any:
    """``x + {prefix}attn({prefix}ln1(x))`` (``{prefix}add1``): a block's attention half."""
    d_model = int(x.shape[-1])
    h = keras.layers.LayerNormalization(epsilon=1e-5, name=prefix + "ln1")(x)
    h = keras.layers.MultiHeadAttention(
        num_heads=num_heads,
        key_dim=d_model // num_heads,
        dropout=dropout,
        name=prefix + "attn",
    )(h, h, use_causal_mask=causal)
    return keras.layers.Add(name=prefix + "add1")([x, h])

"""Small Keras 3 model builders for the nested-research trainer.

Every builder is a plain function with typed keyword arguments, so a Hydra
config can instantiate it through ``_target_`` (for example
``_target_: nested_research.models.build_cnn``).  The trainer supplies
``input_shape`` and ``num_classes`` from the dataset at build time; every other
argument comes from the config.  Builders return an *uncompiled* functional
``keras.Model`` and raise ``ValueError`` (naming the parameter, the value
received and what is allowed) for bad arguments.  List-valued arguments accept
any non-string sequence, including OmegaConf ``ListConfig``.

Models
------
``build_mlp``
    ``Flatten`` -> ``dense_0 .. dense_{n-1}`` (hidden ``Dense`` layers, default
    ``(128, 128, 64)``, each optionally followed by ``dropout_i``) -> ``logits``.
    For flat feature vectors or small images (e.g. 8x8x1 digits).
``build_cnn``
    A 1-D or 2-D convolutional network chosen from the input rank: ``(L,)`` or
    ``(L, C)`` inputs (e.g. mnist1d signals of length 40) get a ``Conv1D``
    stack, ``(H, W, C)`` images get a ``Conv2D`` stack.  ``conv_0 ..
    conv_{n-1}`` use ``padding="same"``; a max-pool ``pool_i`` (stride 2)
    follows every conv except the last, only along spatial axes that are at
    least 2 long, so the feature map never shrinks below 1.  Then a
    global-average pool (``gap``; or ``gmp`` / ``flatten``, see
    ``global_pool``), ``dense_0`` and ``logits``.
``build_transformer``
    A decoder-style (GPT-like) pre-norm transformer over int token ids of shape
    ``(L,)``: token embedding ``embed`` plus learned position embedding
    ``pos_embed``, then ``num_layers`` blocks ``block{i}_*``::

        h = x + block{i}_attn(block{i}_ln1(x))                   # block{i}_add1
        y = h + block{i}_mlp2(gelu(block{i}_mlp1(block{i}_ln2(h))))  # block{i}_add2

    (``MultiHeadAttention`` with a causal mask when ``causal=True``), a final
    ``final_ln`` and a per-position ``logits`` ``Dense`` giving an output of
    shape ``(batch, L, num_classes)`` for per-position targets (the trainer
    applies a masked sparse categorical cross-entropy).

Why the depth matters
---------------------
The Nested Learning optimizer assigns every layer that owns trainable weights
an update interval from its depth (distance from the input): shallow layers
and deep layers update at different frequencies.  That scheduling is only
meaningful with several weight-bearing layers at distinct depths, so every
builder produces at least four of them with its defaults: MLP 3 hidden + logits
= 4; CNN 3 convs + dense + logits = 5; transformer embed, pos_embed, per block
ln1 / attn / ln2 / mlp1 / mlp2, final_ln and logits (14 for 2 blocks).  The
layers appear in ``model.layers`` in input-to-output order and carry stable,
readable names, so a variable path such as ``block0_attn/query/kernel`` or
``dense_1/kernel`` identifies its layer and depth for per-layer statistics.

Layer naming
------------
* MLP: ``input``, ``flatten``, ``dense_{i}``, ``dropout_{i}`` (only when
  ``dropout > 0``), ``logits``.
* CNN: ``input``, ``reshape`` (only for ``(L,)`` inputs), ``conv_{i}``,
  ``pool_{i}``, ``gap`` | ``gmp`` | ``flatten``, ``dense_0``, ``dropout_0``
  (only when ``dropout > 0``), ``logits``.
* Transformer: ``tokens``, ``embed``, ``pos_embed``, ``embed_dropout`` (only
  when ``dropout > 0``), per block ``block{i}_ln1``, ``block{i}_attn``,
  ``block{i}_add1``, ``block{i}_ln2``, ``block{i}_mlp1``, ``block{i}_mlp2``,
  ``block{i}_mlp_dropout`` (only when ``dropout > 0``), ``block{i}_add2``; then
  ``final_ln``, ``logits``.  (Keras 3 forbids ``/`` in layer names, hence the
  ``block{i}_`` prefix rather than ``block{i}/``.)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Callable

import keras
from keras import ops

__all__ = [
    "PositionEmbedding",
    "build_mlp",
    "build_cnn",
    "build_transformer",
    "MODEL_BUILDERS",
]


# ---------------------------------------------------------------------------
# Argument validation helpers
# ---------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(param: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or int(value) < minimum:
        raise ValueError(
            f"`{param}` must be an integer >= {minimum}; got {value!r}"
            f" (type {type(value).__name__})."
        )
    return int(value)


def _check_num_classes(num_classes: Any) -> int:
    if not _is_int(num_classes) or int(num_classes) < 2:
        raise ValueError(
            f"`num_classes` must be an integer >= 2; got {num_classes!r}"
            f" (type {type(num_classes).__name__})."
        )
    return int(num_classes)


def _check_dropout(dropout: Any) -> float:
    ok = isinstance(dropout, numbers.Real) and not isinstance(dropout, bool)
    if not ok or not (0.0 <= float(dropout) < 1.0):
        raise ValueError(
            f"`dropout` must be a float in [0, 1); got {dropout!r}"
            f" (type {type(dropout).__name__})."
        )
    return float(dropout)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(
            f"`name` must be a non-empty string without '/'; got {name!r}."
        )
    return name


def _check_int_list(param: str, value: Any, min_len: int = 1) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(
            f"`{param}` must be a list of positive integers (at least {min_len}"
            f" entries); got {value!r} (type {type(value).__name__})."
        )
    items = list(value)
    if len(items) < min_len or not all(_is_int(v) and int(v) >= 1 for v in items):
        raise ValueError(
            f"`{param}` must be a list of positive integers (at least {min_len}"
            f" entries); got {items!r}."
        )
    return tuple(int(v) for v in items)


def _check_input_shape(
    input_shape: Any, allowed_ranks: tuple[int, ...], what: str
) -> tuple[int, ...]:
    ranks = " or ".join(str(r) for r in allowed_ranks)
    bad = isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence)
    dims = [] if bad else list(input_shape)
    if (
        bad
        or len(dims) not in allowed_ranks
        or not all(_is_int(d) and int(d) >= 1 for d in dims)
    ):
        raise ValueError(
            f"`input_shape` must be a tuple of {ranks} positive integers"
            f" (per-example shape without the batch axis: {what}); got"
            f" {input_shape!r}."
        )
    return tuple(int(d) for d in dims)


def _check_activation(activation: Any) -> str:
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"`activation` must be the name of a Keras activation (e.g. 'relu',"
            f" 'gelu', 'tanh', 'silu'); got {activation!r}."
        ) from exc
    if not isinstance(activation, str):
        raise ValueError(
            f"`activation` must be a string naming a Keras activation; got"
            f" {activation!r} (type {type(activation).__name__})."
        )
    return activation


# ---------------------------------------------------------------------------
# Custom layer
# ---------------------------------------------------------------------------


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
        self.max_length = _check_int("max_length", max_length, 1)
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


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------


def build_mlp(
    input_shape: tuple,
    num_classes: int,
    hidden_units: list[int] = (128, 128, 64),
    activation: str = "relu",
    dropout: float = 0.0,
    name: str = "mlp",
) -> keras.Model:
    """Multi-layer perceptron: ``Flatten`` -> hidden ``Dense`` layers -> ``logits``.

    Args:
        input_shape: per-example shape (any rank >= 1), flattened first.
        num_classes: number of output logits (>= 2).
        hidden_units: widths of the hidden layers ``dense_0, dense_1, ...``
            (non-empty; the default gives 3 hidden layers, 4 weight layers).
        activation: Keras activation name for the hidden layers.
        dropout: dropout rate after each hidden layer, in [0, 1).
        name: model name.

    Returns:
        An uncompiled functional model mapping ``input_shape`` to
        ``(batch, num_classes)`` logits.
    """
    shape = _check_input_shape(
        input_shape, tuple(range(1, 9)), "e.g. (64,) or (8, 8, 1)"
    )
    num_classes = _check_num_classes(num_classes)
    units = _check_int_list("hidden_units", hidden_units)
    activation = _check_activation(activation)
    dropout = _check_dropout(dropout)
    name = _check_name(name)

    inputs = keras.Input(shape=shape, name="input")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, activation=activation, name=f"dense_{i}")(x)
        if dropout > 0.0:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


_GLOBAL_POOLS = ("avg", "max", "flatten")


def build_cnn(
    input_shape: tuple,
    num_classes: int,
    filters: list[int] = (32, 64, 64),
    kernel_size: int = 3,
    dense_units: int = 64,
    dropout: float = 0.0,
    name: str = "cnn",
    global_pool: str = "avg",
) -> keras.Model:
    """Convolutional classifier, 1-D or 2-D depending on ``input_shape``.

    ``(L,)`` inputs are reshaped to ``(L, 1)``; ``(L, C)`` inputs get a
    ``Conv1D`` stack and ``(H, W, C)`` inputs a ``Conv2D`` stack.  Each conv
    ``conv_i`` (``padding="same"``, ReLU) except the last is followed by a
    stride-2 max-pool ``pool_i`` over the spatial axes that are at least 2 long
    (a pool that would leave nothing to pool is skipped), then a global pool,
    ``dense_0`` (ReLU), optional ``dropout_0`` and ``logits``.

    Args:
        input_shape: ``(L,)``, ``(L, C)`` or ``(H, W, C)``.
        num_classes: number of output logits (>= 2).
        filters: channels of ``conv_0, conv_1, ...`` (non-empty).
        kernel_size: conv kernel size (>= 1), square for 2-D.
        dense_units: width of ``dense_0`` (>= 1).
        dropout: dropout rate before ``logits``, in [0, 1).
        name: model name.
        global_pool: reduction of the final feature map: ``"avg"`` (layer
            ``gap``), ``"max"`` (``gmp``) or ``"flatten"`` (``flatten``, keeps
            positional information, e.g. for mnist1d).

    Returns:
        An uncompiled functional model giving ``(batch, num_classes)`` logits.
    """
    shape = _check_input_shape(
        input_shape, (1, 2, 3), "(L,) or (L, C) for 1-D signals, (H, W, C) for images"
    )
    num_classes = _check_num_classes(num_classes)
    channels = _check_int_list("filters", filters)
    kernel_size = _check_int("kernel_size", kernel_size, 1)
    dense_units = _check_int("dense_units", dense_units, 1)
    dropout = _check_dropout(dropout)
    name = _check_name(name)
    if global_pool not in _GLOBAL_POOLS:
        raise ValueError(
            f"`global_pool` must be one of {_GLOBAL_POOLS}; got {global_pool!r}."
        )

    inputs = keras.Input(shape=shape, name="input")
    x = inputs
    if len(shape) == 1:
        x = keras.layers.Reshape((shape[0], 1), name="reshape")(x)
        spatial = [shape[0]]
    else:
        spatial = list(shape[:-1])
    two_d = len(spatial) == 2
    conv_cls = keras.layers.Conv2D if two_d else keras.layers.Conv1D
    pool_cls = keras.layers.MaxPooling2D if two_d else keras.layers.MaxPooling1D

    for i, ch in enumerate(channels):
        x = conv_cls(
            ch, kernel_size, padding="same", activation="relu", name=f"conv_{i}"
        )(x)
        if i == len(channels) - 1:
            break
        pool = tuple(2 if s >= 2 else 1 for s in spatial)
        if all(p == 1 for p in pool):
            continue
        x = pool_cls(
            pool_size=pool if two_d else pool[0],
            strides=pool if two_d else pool[0],
            padding="valid",
            name=f"pool_{i}",
        )(x)
        spatial = [s // p for s, p in zip(spatial, pool)]

    if global_pool == "avg":
        if two_d:
            x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        else:
            x = keras.layers.GlobalAveragePooling1D(name="gap")(x)
    elif global_pool == "max":
        if two_d:
            x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
        else:
            x = keras.layers.GlobalMaxPooling1D(name="gmp")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense_0")(x)
    if dropout > 0.0:
        x = keras.layers.Dropout(dropout, name="dropout_0")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


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
    shape = _check_input_shape(input_shape, (1,), "(L,) token ids")
    num_classes = _check_num_classes(num_classes)
    vocab_size = _check_int("vocab_size", vocab_size, 1)
    d_model = _check_int("d_model", d_model, 1)
    num_heads = _check_int("num_heads", num_heads, 1)
    if d_model % num_heads != 0:
        raise ValueError(
            f"`d_model` must be divisible by `num_heads`; got d_model={d_model},"
            f" num_heads={num_heads} (d_model % num_heads = {d_model % num_heads})."
        )
    num_layers = _check_int("num_layers", num_layers, 1)
    ff_dim = _check_int("ff_dim", ff_dim, 1)
    dropout = _check_dropout(dropout)
    if not isinstance(causal, bool):
        raise ValueError(f"`causal` must be a bool (True or False); got {causal!r}.")
    name = _check_name(name)
    (seq_len,) = shape
    output_positions = _check_int("output_positions", output_positions, 0)
    if output_positions > seq_len:
        raise ValueError(
            f"`output_positions` must be in [0, L={seq_len}]; got {output_positions}.")

    inputs = keras.Input(shape=(seq_len,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab_size, d_model, name="embed")(inputs)
    x = PositionEmbedding(seq_len, name="pos_embed")(x)
    if dropout > 0.0:
        x = keras.layers.Dropout(dropout, name="embed_dropout")(x)

    for i in range(num_layers):
        p = f"block{i}_"
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=p + "ln1")(x)
        h = keras.layers.MultiHeadAttention(
            num_heads=num_heads,
            key_dim=d_model // num_heads,
            dropout=dropout,
            name=p + "attn",
        )(h, h, use_causal_mask=causal)
        x = keras.layers.Add(name=p + "add1")([x, h])
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=p + "ln2")(x)
        h = keras.layers.Dense(ff_dim, activation="gelu", name=p + "mlp1")(h)
        h = keras.layers.Dense(d_model, name=p + "mlp2")(h)
        if dropout > 0.0:
            h = keras.layers.Dropout(dropout, name=p + "mlp_dropout")(h)
        x = keras.layers.Add(name=p + "add2")([x, h])

    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_ln")(x)
    if output_positions:
        x = keras.layers.Cropping1D((seq_len - output_positions, 0), name="output_positions")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "transformer": build_transformer,
}

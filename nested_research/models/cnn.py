"""The convolutional classifier, 1-D or 2-D depending on the input rank.

``(L,)`` or ``(L, C)`` inputs (e.g. mnist1d signals of length 40) get a
``Conv1D`` stack, ``(H, W, C)`` images a ``Conv2D`` stack; see :func:`build_cnn`.
"""

from __future__ import annotations

import keras

from nested_research.core.checks import check_choice, check_int
from nested_research.models.arguments import (check_dropout, check_input_shape, check_int_list,
                                              check_model_name, check_num_classes)

__all__ = ["build_cnn"]

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
    shape = check_input_shape(
        input_shape, (1, 2, 3), "(L,) or (L, C) for 1-D signals, (H, W, C) for images"
    )
    num_classes = check_num_classes(num_classes)
    channels = check_int_list("filters", filters)
    kernel_size = check_int("kernel_size", kernel_size, low=1)
    dense_units = check_int("dense_units", dense_units, low=1)
    dropout = check_dropout(dropout)
    name = check_model_name(name)
    global_pool = check_choice("global_pool", global_pool, _GLOBAL_POOLS)

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

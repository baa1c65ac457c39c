"""The multi-layer perceptron: ``Flatten`` -> hidden ``Dense`` layers -> ``logits``."""

from __future__ import annotations

import keras

from nested_research.models.arguments import (check_activation, check_dropout, check_input_shape,
                                              check_int_list, check_model_name, check_num_classes)

__all__ = ["build_mlp"]


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
    shape = check_input_shape(
        input_shape, tuple(range(1, 9)), "e.g. (64,) or (8, 8, 1)"
    )
    num_classes = check_num_classes(num_classes)
    units = check_int_list("hidden_units", hidden_units)
    activation = check_activation(activation)
    dropout = check_dropout(dropout)
    name = check_model_name(name)

    inputs = keras.Input(shape=shape, name="input")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, activation=activation, name=f"dense_{i}")(x)
        if dropout > 0.0:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)

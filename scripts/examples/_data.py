"""The examples' data: scikit-learn's bundled 8x8 digits (no download), split 80/20."""

import numpy as np


def digits(samples=None, seed=0):
    """``(x_train, y_train, x_test, y_test)``: pixels scaled to [0, 1], flattened to 64."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))[:samples]
    x, y = (x[order] / 16.0).astype("float32"), y[order].astype("int32")
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def mlp(keras, hidden=(64, 32), name="mlp"):
    """A small MLP for 10 classes with named layers (``dense_0``, ``dense_1``, ``logits``)."""
    inputs = keras.Input((64,))
    h = inputs
    for i, width in enumerate(hidden):
        h = keras.layers.Dense(width, activation="relu", name=f"dense_{i}")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name=name)

"""Retrieval on real gradients: the seed's dot scores are uniform, cosine scores are not."""

import math

import keras
import numpy as np
import pytest

from nested_research import NestedLearningOptimizer
from nested_research.data.digits import digits_split_arrays
from nested_research.optimizers.nested.layer_stats import entropy


def _train_digits(scoring: str, epochs: int = 8):
    keras.utils.set_random_seed(0)
    arrays = digits_split_arrays()
    x = arrays["x_train"].reshape(-1, 64).astype("float32") / 255.0
    y = arrays["y_train"].astype("int32")
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    opt = NestedLearningOptimizer(0.003, memory_blend_mode="attention",
                                  attention_scoring=scoring, stats_every=10, auto_schedule=False)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0)  # 360 steps
    return opt


def test_entropy_reference():
    assert entropy([1, 1, 1]) == pytest.approx(math.log(3))
    assert entropy([1, 0, 0]) == 0.0
    np.testing.assert_allclose(entropy([[0.1, 0.3, 0.6], [2, 2, 0]]),
                               [-(0.1 * np.log(0.1) + 0.3 * np.log(0.3) + 0.6 * np.log(0.6)),
                                np.log(2)])


def test_cosine_scoring_moves_weights_away_from_uniform_on_real_gradients():
    dot = list(_train_digits("dot").memory_stats().values())
    cos = list(_train_digits("cosine").memory_stats().values())
    assert len(dot) == len(cos) == 2
    for layer in range(2):
        # the seed's scores <g, M_i>/sqrt(n) are ~0: uniform weights, entropy ln 3
        assert dot[layer]["retrieval_entropy"] == pytest.approx(math.log(3), abs=1e-3)
        w = [cos[layer][f"weight_{t}"] for t in ("short", "medium", "long")]
        assert cos[layer]["retrieval_entropy"] == pytest.approx(entropy(w), abs=0.05)
        # cosine scores: the short tier, which follows the gradient, gets most of the weight
        # (early on all three tiers point where the first gradients did and score alike)
        assert cos[layer]["retrieval_entropy"] < math.log(3) - 0.2 and w[0] > 0.5, w

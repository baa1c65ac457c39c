"""The 0.2.0 state layout (the tiers stacked in one variable) reads files of the 0.1.0 layout.

``data/legacy_0_1_0.keras`` was written by version 0.1.0 (one variable per memory tier:
adaptive retrieval, AMSGrad, depth intervals 2/1 with accumulators, statistics), and
``data/legacy_0_1_0_state.npz`` holds that optimizer's variables by path, as it saved them.
"""

import os

import numpy as np
import pytest
import keras

from nested_research import NestedLearningOptimizer
from nested_research.state_layout import convert_legacy_store

HERE = os.path.dirname(__file__)
LEGACY = os.path.join(HERE, "data", "legacy_0_1_0.keras")


def _saved():
    with np.load(LEGACY.replace(".keras", "_state.npz")) as f:
        return {k.replace("__", "/"): f[k] for k in f.files}


def test_a_0_1_0_keras_file_loads_into_the_stacked_layout_value_for_value():
    saved = _saved()
    model = keras.models.load_model(LEGACY)
    opt = model.optimizer
    assert isinstance(opt, NestedLearningOptimizer) and opt.memory_blend_mode == "adaptive"
    assert len(opt.variables) == len(saved) - 2 * len(opt.model_variables)
    checked = 0
    for i, var in enumerate(opt.model_variables):
        # a reloaded Sequential's paths lose the model name: saved names are matched by suffix
        stem = var.path.replace("/", "_")
        slots = opt.slots(i)
        for tier in ("short", "medium", "long"):
            want = next(v for k, v in saved.items()
                        if k.endswith(f"_{stem}_{tier}_memory"))
            np.testing.assert_array_equal(np.asarray(slots[tier]), want)
            checked += 1
        for name in ("velocity", "velocity_hat", "blend_logits", "updates", "stats"):
            want = next(v for k, v in saved.items()
                        if k.endswith(f"_{stem}_{name}"))
            np.testing.assert_array_equal(np.asarray(slots[name]), want)
            checked += 1
        assert np.any(np.asarray(slots["long"]) != 0)  # a trained state, not zeros
    assert checked == 8 * len(opt.model_variables)
    assert int(opt.iterations) == int(saved["nested_learning/iteration"])
    # and it trains on from there
    rng = np.random.default_rng(1)
    model.fit(rng.normal(size=(16, 4)).astype("float32"), rng.integers(0, 3, size=(16,)),
              batch_size=8, verbose=0)
    assert int(opt.iterations) == int(saved["nested_learning/iteration"]) + 2
    assert all(np.isfinite(np.asarray(v)).all() for v in opt.variables)


def test_a_store_of_neither_layout_is_refused_naming_what_changed():
    opt = NestedLearningOptimizer(max_interval=1)
    variables = [keras.Variable(np.zeros((3, 2), "float32"), name="w")]
    opt.build(variables)
    store = {str(i): np.asarray(v) for i, v in enumerate(opt.variables)}
    assert convert_legacy_store(opt, store) is store          # the current layout: as it is
    store[str(len(store))] = np.zeros(1)
    with pytest.raises(ValueError) as err:
        convert_legacy_store(opt, store)
    msg = str(err.value)
    assert f"has {len(store)} variables" in msg and "one variable per memory tier" in msg
    with pytest.raises(ValueError, match="one variable per memory tier"):
        opt.convert_saved_state(list(store.values()))

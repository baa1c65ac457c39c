"""The 0.2.0 state layout (the tiers stacked in one variable) reads files of the 0.1.0 layout.

``tests/fixtures/legacy_0_1_0.keras`` was written by version 0.1.0 (one variable per memory tier:
adaptive retrieval, AMSGrad, depth intervals 2/1 with accumulators, statistics), and
``tests/fixtures/legacy_0_1_0_state.npz`` holds that optimizer's variables by path, as it saved them.
"""

import os

import numpy as np
import pytest
import keras

from nested_research import NestedLearningOptimizer
from nested_research.optimizers.nested.state_layout import convert_legacy_store

from repo import FIXTURES

LEGACY = os.path.join(FIXTURES, "legacy_0_1_0.keras")


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


def _trained(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh",
                              name="d0"), keras.layers.Dense(3, name="d1")], name="m")
    opt = NestedLearningOptimizer(learning_rate=0.01, memory_blend_mode="adaptive",
                                  amsgrad=True, max_interval=2)
    opt.compute_depths_from_model(model)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    return model, opt


def test_a_checkpoint_of_the_0_1_0_layout_resumes_into_the_stacked_layout(tmp_path):
    """A checkpoint whose optimizer group has one variable per tier (0.1.0's order: the tiers
    of every variable, then the velocities and the rest) restores value for value."""
    import types
    import tensorflow as tf

    from nested_research.training import checkpoint_files as checkpoint
    from nested_research.training.resume import Resume

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype("float32")
    y = rng.integers(0, 3, size=(24,))
    model, opt = _trained()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    stack_vars = [v for v in opt.variables if v.path.endswith("_memory")]
    legacy = []
    for v in opt.variables:
        if any(v is s for s in stack_vars):
            for t, name in enumerate(("short", "medium", "long")):
                legacy.append(keras.Variable(np.asarray(v)[t], name=f"{v.name}_{name}_memory"))
        else:
            legacy.append(v)
    assert len(legacy) == len(opt.variables) + 2 * len(stack_vars)
    meta = {"epoch": 1, "position": 0, "history": {}, "config": {}}
    path = checkpoint.write(str(tmp_path), 3, {"model": model.variables, "optimizer": legacy,
                                                "metrics": [], "extra": []}, meta)
    fresh, fresh_opt = _trained(seed=1)
    data = types.SimpleNamespace(val=tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
                                 test=None)
    Resume(checkpoint.load(path)).restore(fresh, data)
    assert len(fresh_opt.variables) == len(opt.variables)
    for a, b in zip(opt.variables, fresh_opt.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

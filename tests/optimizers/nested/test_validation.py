"""Constructor validation: every bad input is a ``ValueError`` naming the parameter and the value.

Valid edge values are accepted, stored as given and usable in a step.
"""

import warnings

import numpy as np
import pytest
import keras

from nested_research import NestedLearningOptimizer

from reference import NumpyNested

BAD = [
    # (kwargs, parameter name, the bad value as it must appear in the message)
    (dict(short_term_decay=1.0), "short_term_decay", "1.0"),
    (dict(short_term_decay=-0.1), "short_term_decay", "-0.1"),
    (dict(medium_term_decay=1.0), "medium_term_decay", "1.0"),
    (dict(medium_term_decay=-0.1), "medium_term_decay", "-0.1"),
    (dict(long_term_decay=1.0), "long_term_decay", "1.0"),
    (dict(long_term_decay=-0.1), "long_term_decay", "-0.1"),
    (dict(long_term_decay=1.5), "long_term_decay", "1.5"),
    (dict(short_term_decay=float("nan")), "short_term_decay", "nan"),
    (dict(medium_term_decay="0.9"), "medium_term_decay", "0.9"),
    (dict(beta_1=1.0), "beta_1", "1.0"),
    (dict(beta_2=-0.5), "beta_2", "-0.5"),
    (dict(memory_blend_mode="softmax"), "memory_blend_mode", "softmax"),
    (dict(memory_blend_mode="Attention"), "memory_blend_mode", "Attention"),
    (dict(schedule_curve="quadratic"), "schedule_curve", "quadratic"),
    (dict(max_interval=0), "max_interval", "0"),
    (dict(max_interval=2.5), "max_interval", "2.5"),
    (dict(max_interval=-3), "max_interval", "-3"),
    (dict(default_interval=0), "default_interval", "0"),
    (dict(warmup_steps=-1), "warmup_steps", "-1"),
    (dict(lr_warmup_fraction=0.5, lr_hold_fraction=0.5, lr_decay_fraction=0.5),
     "lr_warmup_fraction", "1.5"),  # sum 1.5
    (dict(lr_warmup_fraction=0.1, lr_hold_fraction=0.1, lr_decay_fraction=0.1),
     "lr_decay_fraction", "0.3"),  # sum 0.3
    (dict(lr_warmup_fraction=-0.25, lr_hold_fraction=0.75), "lr_warmup_fraction", "-0.25"),
    (dict(lr_hold_fraction=-0.2, lr_decay_fraction=0.95), "lr_hold_fraction", "-0.2"),
    (dict(lr_decay_fraction=-0.5, lr_warmup_fraction=1.0, lr_hold_fraction=0.5),
     "lr_decay_fraction", "-0.5"),
    (dict(lr_min_fraction=-0.1), "lr_min_fraction", "-0.1"),
    (dict(lr_min_fraction=2.0), "lr_min_fraction", "2.0"),
    (dict(compression_rank=0), "compression_rank", "0"),
    (dict(compression_rank=0, use_gradient_compression=True), "compression_rank", "0"),
    (dict(compression_rank=1.5), "compression_rank", "1.5"),
    (dict(use_gradient_compression=True, compression_rank=None), "compression_rank", "None"),
    (dict(layer_update_intervals=[(3, 2)]), "layer_update_intervals", "3"),
    (dict(layer_update_intervals={None: 2}), "layer_update_intervals", "None"),
    (dict(layer_update_intervals=[("dense", 0)]), "layer_update_intervals", "0"),
    (dict(layer_update_intervals={"encoder": -2}), "layer_update_intervals", "-2"),
    (dict(layer_update_intervals=[("dense", 1.5)]), "layer_update_intervals", "1.5"),
    (dict(layer_update_intervals=[("dense[", 2)]), "layer_update_intervals", "dense["),
    (dict(layer_update_intervals=["dense"]), "layer_update_intervals", "dense"),
    (dict(short_term_weight=-0.1), "short_term_weight", "-0.1"),
    (dict(medium_term_weight=-1.0), "medium_term_weight", "-1.0"),
    (dict(long_term_weight=-0.6), "long_term_weight", "-0.6"),
    (dict(short_term_weight=0.0, medium_term_weight=0.0, long_term_weight=0.0),
     "long_term_weight", "0.0"),
    (dict(memory_mix=1.5), "memory_mix", "1.5"),
    (dict(memory_mix=-0.1), "memory_mix", "-0.1"),
    (dict(adaptive_rate=-1.0), "adaptive_rate", "-1.0"),
    (dict(epsilon=0), "epsilon", "0"),
    (dict(epsilon=-1e-8), "epsilon", "-1e-08"),
    (dict(steps_per_epoch=0), "steps_per_epoch", "0"),
    (dict(steps_per_epoch=-5), "steps_per_epoch", "-5"),
    (dict(steps_per_epoch=10.0), "steps_per_epoch", "10.0"),
    (dict(stats_every=-1), "stats_every", "-1"),
]


@pytest.mark.parametrize("kwargs,name,bad", BAD,
                         ids=[f"{n}={b}" for _, n, b in BAD])
def test_bad_input_raises_value_error_naming_parameter_and_value(kwargs, name, bad):
    with pytest.raises(ValueError) as err:
        NestedLearningOptimizer(**kwargs)
    msg = str(err.value)
    assert name in msg, msg
    assert bad in msg, msg


@pytest.mark.parametrize("name", ["max_interval", "default_interval", "warmup_steps",
                                  "steps_per_epoch", "stats_every", "compression_rank"])
def test_booleans_are_not_integers(name):
    with pytest.raises(ValueError, match=name):
        NestedLearningOptimizer(**{name: True})


def test_methods_validate_their_arguments():
    opt = NestedLearningOptimizer(max_interval=1)
    with pytest.raises(ValueError, match=r"steps_per_epoch=0"):
        opt.set_steps_per_epoch(0)
    with pytest.raises(ValueError, match=r"steps_per_epoch=2\.5"):
        opt.set_steps_per_epoch(2.5)
    v = keras.Variable(np.zeros(3), name="w")
    with pytest.raises(ValueError, match=r"depth=-1"):
        opt.register_variable_depth(v, -1)
    with pytest.raises(ValueError, match=r"depth=1\.5"):
        opt.register_variable_depth(v, 1.5)
    assert opt.variable_depths == {}
    with pytest.raises(ValueError, match="keras.Model"):
        opt.compute_depths_from_model(keras.layers.Dense(2))
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        opt.compute_depths_from_model(unbuilt)
    with pytest.raises(ValueError, match="no trainable variables"):
        opt.register_layer_depth(keras.layers.Dense(2), 0)


def test_registration_after_build_is_refused():
    opt = NestedLearningOptimizer(max_interval=1)
    v = keras.Variable(np.zeros(3), name="w")
    opt.apply([np.ones(3)], [v])
    with pytest.raises(RuntimeError, match="already built"):
        opt.register_variable_depth(v, 0)


# ---------------------------------------------------------------- valid edge values
EDGE = [
    dict(short_term_decay=0.0),
    dict(medium_term_decay=0.0),
    dict(long_term_decay=0.0),
    dict(short_term_decay=0.999999, medium_term_decay=0.0, long_term_decay=0.5),
    dict(max_interval=1),
    dict(lr_warmup_fraction=1.0, lr_hold_fraction=0.0, lr_decay_fraction=0.0),
    dict(lr_warmup_fraction=0.0, lr_hold_fraction=0.0, lr_decay_fraction=1.0),
    dict(lr_warmup_fraction=0.0, lr_hold_fraction=1.0, lr_decay_fraction=0.0,
         lr_min_fraction=0.0, steps_per_epoch=1),
    dict(lr_warmup_fraction=0.1, lr_hold_fraction=0.2, lr_decay_fraction=0.7),  # float sum
    dict(lr_min_fraction=1.0),
    dict(memory_mix=0.0),
    dict(memory_mix=1.0),
    dict(short_term_weight=0.0, medium_term_weight=0.0, long_term_weight=0.1),
    dict(compression_rank=1, use_gradient_compression=True),
    dict(compression_rank=3),  # a rank without compression is harmless
    dict(epsilon=1e-30),
    dict(beta_1=0.0, beta_2=0.0),
    dict(adaptive_rate=0.0),
    dict(warmup_steps=0, default_interval=1, stats_every=0),
    dict(layer_update_intervals={}, auto_schedule=False),
    dict(layer_update_intervals=[["dense", 1], ("bias$", 7)], auto_schedule=False),
    dict(learning_rate=1),  # an int rate becomes a float
]


@pytest.mark.parametrize("kwargs", EDGE, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_valid_edge_values_are_accepted(kwargs):
    opt = NestedLearningOptimizer(**kwargs)
    cfg = opt.get_config()
    for key, value in kwargs.items():
        if key == "layer_update_intervals":
            want = [list(p) for p in (value.items() if isinstance(value, dict) else value)] or None
            assert cfg[key] == want
        elif key == "learning_rate":
            assert cfg[key] == pytest.approx(float(value))
        else:
            assert cfg[key] == value, key
    # and the configuration survives a config round trip
    assert NestedLearningOptimizer.from_config(cfg.copy()).get_config() == cfg


def test_max_interval_one_needs_no_depths():
    """max_interval=1 with auto_schedule: nothing to schedule, so no 'no depths' warning."""
    opt = NestedLearningOptimizer(max_interval=1)
    v = keras.Variable(np.zeros(4), name="w")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.apply([np.ones(4)], [v])
    assert opt.intervals == {"w": 1}


@pytest.mark.parametrize("decays", [(0.0, 0.994, 0.9999), (0.94, 0.0, 0.9999), (0.0, 0.0, 0.0)])
def test_zero_decay_steps_match_the_reference(decays):
    """A zero decay is valid and means "that tier is the last gradient"."""
    shapes = [(6,), (2, 3)]
    opt = NestedLearningOptimizer(short_term_decay=decays[0], medium_term_decay=decays[1],
                                  long_term_decay=decays[2], memory_blend_mode="fixed",
                                  max_interval=1)
    ref = NumpyNested(shapes, mode="fixed", decays=decays)
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s), name=f"v{i}") for i, s in enumerate(shapes)]
    params = [v.numpy().astype(float) for v in variables]
    for _ in range(6):
        grads = [rng.normal(size=s) for s in shapes]
        opt.apply(grads, variables)
        params = ref.step(params, grads)
    for v, p in zip(variables, params):
        np.testing.assert_allclose(v.numpy(), p, rtol=1e-5, atol=1e-7)
    for name, d in zip(("short", "medium", "long"), decays):
        if d == 0.0:
            for i, g in enumerate(grads):
                np.testing.assert_allclose(np.asarray(opt.slots(i)[name]), g, rtol=1e-6)

"""Property-based checks over optimizer parameters (hypothesis).

Every valid combination gives finite updates on random gradients of random
shapes (scalars and 1-D included) and agrees with the NumPy reference; every
invalid value raises the documented ``ValueError`` naming the parameter.
"""

import math

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nested_research import NestedLearningOptimizer

from reference import NumpyNested

decay = st.floats(0.0, 0.9999)
shapes = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
                  min_size=1, max_size=3)

valid = st.fixed_dictionaries({
    "short_term_decay": decay, "medium_term_decay": decay, "long_term_decay": decay,
    "memory_blend_mode": st.sampled_from(["fixed", "adaptive", "attention", "none"]),
    "short_term_weight": st.floats(0.0, 2.0), "medium_term_weight": st.floats(0.0, 2.0),
    "long_term_weight": st.floats(0.01, 2.0),
    "memory_mix": st.floats(0.0, 1.0),
    "beta_1": st.floats(0.0, 0.999), "beta_2": st.floats(0.5, 0.9999),
    "epsilon": st.floats(1e-8, 1e-3),
    "amsgrad": st.booleans(),
    "learning_rate": st.floats(1e-5, 0.1),
    "warmup_steps": st.integers(0, 3),
    "accumulate_gradients": st.booleans(),
})


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(params=valid, var_shapes=shapes, interval=st.integers(1, 3), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-6, 1.0, 1e4]))
def test_valid_parameters_give_finite_updates_matching_reference(params, var_shapes, interval,
                                                                 seed, scale):
    keras.backend.clear_session()
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(np.zeros(s), dtype="float64", name=f"p{i}")
                 for i, s in enumerate(var_shapes)]
    opt = NestedLearningOptimizer(auto_schedule=False,
                                  layer_update_intervals=[("p0", interval)], **params)
    ref = NumpyNested(
        var_shapes, mode=params["memory_blend_mode"], lr=params["learning_rate"],
        decays=(params["short_term_decay"], params["medium_term_decay"],
                params["long_term_decay"]),
        weights=(params["short_term_weight"], params["medium_term_weight"],
                 params["long_term_weight"]),
        mix=params["memory_mix"], beta_1=params["beta_1"], beta_2=params["beta_2"],
        eps=params["epsilon"], amsgrad=params["amsgrad"],
        intervals=[interval] + [1] * (len(var_shapes) - 1),
        accumulate=params["accumulate_gradients"], warmup=params["warmup_steps"])
    ref_params = [np.zeros(s) for s in var_shapes]
    for _ in range(6):
        grads = [rng.normal(size=s) * scale for s in var_shapes]
        opt.apply(grads, variables)
        ref_params = ref.step(ref_params, grads)
    for v, p in zip(variables, ref_params):
        got = v.numpy()
        assert np.all(np.isfinite(got))
        # the lr variable is float32: agreement to float32 rounding of lr
        np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-12)


BAD = {
    "short_term_decay": st.one_of(st.floats(1.0, 10.0), st.floats(-10.0, -1e-6)),
    "long_term_decay": st.one_of(st.floats(1.0, 10.0), st.just(float("nan"))),
    "memory_blend_mode": st.text(min_size=1).filter(
        lambda s: s not in ("fixed", "adaptive", "attention", "none")),
    "schedule_curve": st.text(min_size=1).filter(
        lambda s: s not in ("linear", "exponential", "cosine")),
    "max_interval": st.one_of(st.integers(-100, 0), st.floats(1.5, 9.5)),
    "compression_rank": st.integers(-100, 0),
    "memory_mix": st.one_of(st.floats(1.0001, 100.0), st.floats(-100.0, -1e-6)),
    "epsilon": st.floats(-1.0, 0.0),
    "warmup_steps": st.integers(-100, -1),
    "lr_warmup_fraction": st.floats(0.51, 1.0),
    "steps_per_epoch": st.integers(-10, 0),
}


@settings(max_examples=8, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("name", sorted(BAD))
def test_invalid_values_raise_naming_the_parameter(name, data):
    value = data.draw(BAD[name])
    with pytest.raises(ValueError) as err:
        NestedLearningOptimizer(**{name: value})
    message = str(err.value)
    assert name in message
    if isinstance(value, float) and math.isnan(value):
        assert "nan" in message
    elif name != "lr_warmup_fraction":
        assert repr(value) in message or str(value) in message

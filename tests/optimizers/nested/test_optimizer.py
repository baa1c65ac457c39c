"""The optimizer's numbers against an independent NumPy reference, and its reductions."""

import numpy as np
import pytest
import keras

from nested_research import NestedLearningOptimizer
from nested_research.optimizers.nested.compression import low_rank

from reference import NumpyNested

SHAPES = [(7,), (4, 5), (2, 3, 4), ()]


def make_vars(shapes, rng=None, zeros=True, dtype="float64"):
    """float64 by default so that the comparison tests the formulas, not float32 rounding."""
    rng = rng or np.random.default_rng(1)
    return [keras.Variable(np.zeros(s, dtype) if zeros else rng.normal(size=s).astype(dtype),
                           name=f"v{i}", dtype=dtype)
            for i, s in enumerate(shapes)]


def grad_stream(shapes, steps, seed=0):
    rng = np.random.default_rng(seed)
    drift = [rng.normal(size=s) for s in shapes]
    out = []
    for t in range(steps):
        scale = 0.5 + rng.uniform()
        out.append([(d + rng.normal(size=s) * scale).astype("float32")
                    for d, s in zip(drift, shapes)])
    return out


def run_both(opt, ref, shapes, steps, seed=0, zeros=True, check_each=None):
    variables = make_vars(shapes, zeros=zeros)
    params = [v.numpy().astype(float) for v in variables]
    for t, grads in enumerate(grad_stream(shapes, steps, seed)):
        opt.apply(grads, variables)
        params = ref.step(params, grads)
        if check_each:
            check_each(t, variables, params)
    return variables, params


@pytest.mark.parametrize("mode", ["fixed", "attention", "adaptive"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_matches_seed_formulas(mode, amsgrad):
    opt = NestedLearningOptimizer(memory_blend_mode=mode, amsgrad=amsgrad, learning_rate=0.01)
    ref = NumpyNested(SHAPES, mode=mode, amsgrad=amsgrad, lr=0.01)
    max_err = []

    def check(t, variables, params):
        for v, p in zip(variables, params):
            np.testing.assert_allclose(v.numpy(), p, rtol=1e-5, atol=1e-9)
            max_err.append(np.max(np.abs(v.numpy() - p)))

    _, params = run_both(opt, ref, SHAPES, 24, check_each=check)
    # The parameters really moved (the comparison is not trivially 0 == 0).
    assert all(np.max(np.abs(p)) > 1e-3 for p in params)


def test_float32_variables_track_the_reference():
    """In float32 the same run stays within float32 rounding of the float64 reference."""
    opt = NestedLearningOptimizer(learning_rate=0.01)
    ref = NumpyNested(SHAPES, lr=0.01)
    variables = make_vars(SHAPES, zeros=False, dtype="float32")
    params = [v.numpy().astype(float) for v in variables]
    for grads in grad_stream(SHAPES, 20):
        opt.apply(grads, variables)
        params = ref.step(params, grads)
    for v, p in zip(variables, params):
        assert v.dtype == "float32"
        np.testing.assert_allclose(v.numpy(), p, rtol=1e-5, atol=2e-6)


def test_attention_weights_not_uniform_and_match_reference():
    """Attention retrieval is really data dependent: the weights differ from 1/3."""
    shapes = [(16,)]
    opt = NestedLearningOptimizer(memory_blend_mode="attention", stats_every=1)
    ref = NumpyNested(shapes, mode="attention")
    run_both(opt, ref, shapes, 10)
    w = opt.memory_stats()
    row = next(iter(w.values()))
    got = np.array([row["weight_short"], row["weight_medium"], row["weight_long"]])
    np.testing.assert_allclose(got, ref.last_weights[0], rtol=1e-5)
    assert np.max(np.abs(got - 1 / 3)) > 1e-3


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_cosine_attention_matches_reference_step_by_step(temperature):
    """``attention_scoring="cosine"``: w = softmax(cos(g, M_i') / tau), every step, in float64."""
    opt = NestedLearningOptimizer(memory_blend_mode="attention", attention_scoring="cosine",
                                  attention_temperature=temperature, learning_rate=0.01,
                                  stats_every=1)
    ref = NumpyNested(SHAPES, mode="attention", scoring="cosine", temperature=temperature,
                      lr=0.01)
    seen = []

    def check(t, variables, params):
        for v, p in zip(variables, params):
            np.testing.assert_allclose(v.numpy(), p, rtol=1e-6, atol=1e-10)
        seen.append(ref.last_weights[1].copy())

    run_both(opt, ref, SHAPES, 20, check_each=check)
    row = list(opt.memory_stats().values())[1]
    got = np.array([row[f"weight_{t}"] for t in ("short", "medium", "long")])
    np.testing.assert_allclose(got, seen[-1], rtol=1e-5)
    if temperature < 0.1:  # a low temperature turns these cosine gaps into unequal weights
        assert np.max(np.abs(got - 1 / 3)) > 0.05


@pytest.mark.parametrize("mix", [0.0, 0.25, 1.0])
def test_memory_mix_parameter(mix):
    opt = NestedLearningOptimizer(memory_blend_mode="fixed", memory_mix=mix)
    ref = NumpyNested(SHAPES[:2], mode="fixed", mix=mix)
    variables, params = run_both(opt, ref, SHAPES[:2], 20)
    for v, p in zip(variables, params):
        np.testing.assert_allclose(v.numpy(), p, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_memory_none_equals_keras_adam(amsgrad):
    kw = dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6, amsgrad=amsgrad)
    ours = NestedLearningOptimizer(memory_blend_mode="none", **kw)
    adam = keras.optimizers.Adam(**kw)
    a_vars = make_vars(SHAPES, zeros=False)
    b_vars = make_vars(SHAPES, zeros=False)
    for grads in grad_stream(SHAPES, 20, seed=3):
        ours.apply(grads, a_vars)
        adam.apply(grads, b_vars)
    for a, b in zip(a_vars, b_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    moved = [np.max(np.abs(a.numpy() - s.numpy())) for a, s in zip(a_vars, make_vars(SHAPES, zeros=False))]
    assert min(moved) > 1e-3


def test_memory_none_matches_numpy_adam():
    ref = NumpyNested(SHAPES, mode="none", lr=0.01)
    opt = NestedLearningOptimizer(memory_blend_mode="none", learning_rate=0.01)
    variables, params = run_both(opt, ref, SHAPES, 20)
    for v, p in zip(variables, params):
        np.testing.assert_allclose(v.numpy(), p, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- adaptive retrieval
def _adaptive_weights_after(grads_fn, steps=300):
    shapes = [(32,)]
    opt = NestedLearningOptimizer(memory_blend_mode="adaptive", short_term_weight=1.0,
                                  medium_term_weight=1.0, long_term_weight=1.0,
                                  adaptive_rate=0.5, long_term_decay=0.99)
    ref = NumpyNested(shapes, mode="adaptive", weights=(1, 1, 1), adaptive_rate=0.5,
                      decays=(0.94, 0.994, 0.99))
    variables = make_vars(shapes)
    params = [v.numpy() for v in variables]
    for t in range(steps):
        g = [grads_fn(t).astype("float32")]
        opt.apply(g, variables)
        params = ref.step(params, g)
    logits = np.asarray(opt.slots(0)["blend_logits"])
    w = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(logits, ref.logits[0], rtol=1e-4, atol=1e-5)
    return w


def test_adaptive_weights_move_to_long_memory_on_stationary_noise():
    """Fixed direction + heavy noise: the slow tiers average the noise out and predict best."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=32)
    w = _adaptive_weights_after(lambda t: u + 3.0 * rng.normal(size=32))
    assert w[2] > 0.4 and w[0] < 0.25, w
    assert np.isclose(w.sum(), 1.0)


def test_adaptive_weights_move_to_short_memory_when_direction_drifts():
    """A direction that rotates quickly: only the short tier keeps up."""
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(32, 2)))[0].T

    def grad(t):
        angle = 2 * np.pi * t / 60.0
        return np.cos(angle) * basis[0] + np.sin(angle) * basis[1] + 0.05 * rng.normal(size=32)

    w = _adaptive_weights_after(grad)
    assert w[0] > 0.45 and w[0] > w[2], w


def test_adaptive_weights_bounded():
    opt = NestedLearningOptimizer(memory_blend_mode="adaptive", adaptive_rate=50.0)
    variables = make_vars([(8,)])
    g = np.ones(8, "float32")
    for _ in range(100):
        opt.apply([g], variables)
    logits = np.asarray(opt.slots(0)["blend_logits"])
    assert np.all(np.abs(logits) <= 4.0 + 1e-6)
    w = np.exp(logits) / np.exp(logits).sum()
    assert w.min() >= 1 / (1 + 2 * np.exp(8.0)) - 1e-9


# ---------------------------------------------------------------- compression
@pytest.mark.parametrize("shape,rank", [((12, 9), 2), ((3, 4, 10), 3), ((6, 6), 6), ((5,), 1)])
def test_low_rank_matches_numpy_svd(shape, rank):
    rng = np.random.default_rng(0)
    g = rng.normal(size=shape).astype("float32")
    got = np.asarray(low_rank(keras.ops.convert_to_tensor(g), rank))
    if len(shape) < 2:
        np.testing.assert_array_equal(got, g)
        return
    m = g.reshape(-1, shape[-1]).astype(float)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    want = (u[:, :rank] * s[:rank]) @ vt[:rank]
    np.testing.assert_allclose(got, want.reshape(shape), rtol=1e-4, atol=1e-5)
    assert np.linalg.matrix_rank(got.reshape(m.shape), tol=1e-4) == min(rank, *m.shape)


def test_compression_inside_the_optimizer():
    shapes = [(12, 9), (9,)]
    grads = grad_stream(shapes, 8)
    opt = NestedLearningOptimizer(use_gradient_compression=True, compression_rank=2)
    plain = NestedLearningOptimizer()
    ref = NumpyNested(shapes, mode="attention")
    a, b = make_vars(shapes), make_vars(shapes)
    params = [v.numpy() for v in a]
    for g in grads:
        opt.apply(g, a)
        m = g[0].astype(float)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        compressed = [((u[:, :2] * s[:2]) @ vt[:2]).astype("float32"), g[1]]
        plain.apply(compressed, b)
        params = ref.step(params, compressed)
    for x, y, p in zip(a, b, params):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(x.numpy(), p, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- step forms (speed)
# The step runs eagerly, traced in graph mode, and compiled by XLA.  Each must give the
# reference's numbers.  (64, 40) and (2051,) are larger tensors, () is a scalar.
FORM_SHAPES = [(7,), (4, 5), (), (64, 40), (2051,)]
FORMS = ["eager", "graph", "xla"]


def form_step(opt, form):
    """``(step(grads), variables, params)``: ``opt`` built on random ``FORM_SHAPES`` variables,
    its step in ``form`` (``eager``, ``graph``: a ``tf.function``, ``xla``: compiled)."""
    import tensorflow as tf

    variables = make_vars(FORM_SHAPES, zeros=False)
    params = [v.numpy().astype(float) for v in variables]
    opt.build(variables)
    if form == "eager":
        return (lambda g: opt.apply(g, variables)), variables, params
    return tf.function(lambda g: opt.apply(g, variables), jit_compile=form == "xla"), \
        variables, params


def tier_values(opt):
    """Per tier, the values of every variable's tier (``opt.slots``), as NumPy arrays."""
    n = len(opt.model_variables)
    names = ["momentum"] if opt.memory_blend_mode == "none" else ["short", "medium", "long"]
    return [[np.asarray(opt.slots(i)[t]) for i in range(n)] for t in names]


@pytest.mark.parametrize("mode", ["fixed", "attention", "adaptive", "none"])
@pytest.mark.parametrize("form", FORMS)
def test_every_step_form_matches_the_reference(mode, form):
    import tensorflow as tf

    amsgrad = mode in ("attention", "none")
    opt = NestedLearningOptimizer(memory_blend_mode=mode, learning_rate=0.01, amsgrad=amsgrad)
    # lr as the float32 variable holds it, so that the comparison is float64-tight
    ref = NumpyNested(FORM_SHAPES, mode=mode, lr=float(np.float32(0.01)), amsgrad=amsgrad)
    step, variables, params = form_step(opt, form)
    # (the adaptive logits start from a float32 constant)
    rtol, atol = (1e-7, 1e-10) if mode == "adaptive" else (1e-9, 1e-12)
    for grads in grad_stream(FORM_SHAPES, 12, seed=5):
        step([tf.constant(g, tf.float64) for g in grads])
        params = ref.step(params, grads)
        for v, p in zip(variables, params):
            np.testing.assert_allclose(v.numpy(), p, rtol=rtol, atol=atol)
    if mode != "none":
        for tier_vals, ref_tier in zip(tier_values(opt), ref.mems):
            for m, r in zip(tier_vals, ref_tier):
                np.testing.assert_allclose(m, r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("accumulate", [False, True])
def test_skipped_steps_branch_around_the_math(accumulate):
    """Interval k > 1: the update math lives in a ``cond`` branch, not computed and discarded."""
    import tensorflow as tf

    shapes = [(6, 5), (5,)]
    variables = make_vars(shapes, dtype="float32")
    opt = NestedLearningOptimizer(auto_schedule=False, default_interval=3,
                                  accumulate_gradients=accumulate)
    opt.build(variables)
    grads = [tf.zeros(s) for s in shapes]
    graph = tf.function(lambda g: opt.apply(g, variables)).get_concrete_function(grads).graph
    top = [op.type for op in graph.get_operations()]
    branches = [op for op in graph.get_operations() if op.type in ("If", "StatelessIf")]
    assert len(branches) == len(shapes)
    math_ops = {"Sqrt", "MatMul", "Softmax", "AssignSubVariableOp"}
    assert not math_ops & set(top)          # nothing of the update outside the branches
    fdef = {f.signature.name: f for f in graph.as_graph_def().library.function}
    for op in branches:
        then_ops = {n.op for n in fdef[op.get_attr("then_branch").name].node_def}
        else_ops = {n.op for n in fdef[op.get_attr("else_branch").name].node_def}
        assert {"Sqrt", "AssignSubVariableOp"} <= then_ops
        assert not math_ops & else_ops
        assert ("AssignAddVariableOp" in else_ops) == accumulate  # the accumulator, if any

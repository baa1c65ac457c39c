"""Row-sparse gradients (``tf.IndexedSlices``, as embedding layers produce them).

The sparse rules (``nested_research/optimizers/sparse.py``) must give what the dense
equivalent of the slices gives (duplicate rows summed), without ever building
a table-sized gradient; small tables and XLA densify, and must agree too.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nested_research import NestedLearningOptimizer
from nested_research.optimizers import sparse as sparse_module
from nested_research.optimizers.sparse import SPARSE_MIN_ELEMENTS

from reference import NumpyNested

TABLE = (300, 40)          # 12000 elements: above SPARSE_MIN_ELEMENTS, takes the sparse path
assert np.prod(TABLE) > SPARSE_MIN_ELEMENTS


def slices_stream(shape, steps, seed=0, rows=24):
    """Per step: (indices with duplicates, values) and the dense equivalent (float64)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        idx = rng.integers(0, shape[0] // 3, size=rows)      # a third of the table: repeats
        idx[: rows // 4] = idx[rows // 4: rows // 2]           # explicit duplicates
        vals = rng.normal(size=(rows,) + shape[1:]).astype("float32")
        dense = np.zeros(shape)
        np.add.at(dense, idx, vals.astype(np.float64))
        out.append((idx.astype("int32"), vals, dense))
    return out


def _make(dtype, seed=1, shape=TABLE):
    rng = np.random.default_rng(seed)
    init = rng.normal(size=shape) * 0.1
    return keras.Variable(init.astype(dtype), name="table", dtype=dtype), init


def _run(opt, var, stream, sparse, jit=False):
    """Apply the stream through a compiled step (graph mode or XLA), sparse or dense."""
    dtype = var.dtype

    @tf.function(jit_compile=jit, autograph=False)
    def step(idx, vals, dense):
        if sparse:
            g = tf.IndexedSlices(tf.cast(vals, dtype), idx, tf.constant(tuple(var.shape), "int64"))
        else:
            g = tf.cast(dense, dtype)
        opt.apply([g], [var])

    for idx, vals, dense in stream:
        step(tf.constant(idx), tf.constant(vals), tf.constant(dense))
    return step


def _state(opt):
    return [np.asarray(v, np.float64) for v in opt.variables]


CASES = [
    dict(memory_blend_mode="fixed"),
    dict(memory_blend_mode="attention"),
    dict(memory_blend_mode="adaptive"),
    dict(memory_blend_mode="none"),
    dict(memory_blend_mode="attention", amsgrad=True),
    dict(memory_blend_mode="attention", state_dtype="bfloat16"),
    dict(memory_blend_mode="none", state_dtype="bfloat16"),
    dict(memory_blend_mode="attention", layer_update_intervals=[("table", 2)]),
    dict(memory_blend_mode="fixed", layer_update_intervals=[("table", 3)],
         accumulate_gradients=False),
    dict(memory_blend_mode="attention", layer_update_intervals=[("table", 2)],
         state_dtype="bfloat16"),
]


def _opt(**kw):
    return NestedLearningOptimizer(learning_rate=0.01, auto_schedule=False, **kw)


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_sparse_equals_dense_equivalent(kw):
    """Same variable and the same optimizer state (every variable of it) after 7 steps."""
    stream = slices_stream(TABLE, 7)
    results = []
    for sparse in (True, False):
        var, _ = _make("float32")
        opt = _opt(**kw)
        _run(opt, var, stream, sparse)
        results.append((var.numpy(), _state(opt)))
    (v_s, st_s), (v_d, st_d) = results
    np.testing.assert_allclose(v_s, v_d, rtol=1e-5, atol=1e-7)
    assert len(st_s) == len(st_d)
    for a, b in zip(st_s, st_d):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # rows no gradient ever reached have zero memory and stay exactly as they were; the rows
    # that were reached moved (with every-step updates)
    init = _make("float32")[1].astype("float32")
    touched = np.unique(np.concatenate([s[0] for s in stream]))
    untouched = np.setdiff1d(np.arange(TABLE[0]), touched)
    np.testing.assert_array_equal(v_s[untouched], init[untouched])
    if "layer_update_intervals" not in kw:
        assert np.all(np.abs(v_s[touched] - init[touched]).max(axis=1) > 0)


@pytest.mark.parametrize("mode", ["fixed", "attention", "adaptive", "none"])
def test_sparse_matches_numpy_reference(mode):
    """Float64 table against the independent NumPy reference on the dense equivalent."""
    stream = slices_stream(TABLE, 6, seed=3)
    var, init = _make("float64", seed=4)
    opt = _opt(memory_blend_mode=mode)
    _run(opt, var, stream, sparse=True)
    ref = NumpyNested([TABLE], mode=mode, lr=float(np.float32(0.01)))  # the f32 lr variable
    params = [init]
    for _, _, dense in stream:
        params = ref.step(params, [dense])
    np.testing.assert_allclose(var.numpy(), params[0], rtol=1e-6, atol=1e-10)


def test_rows_touched_once_then_left_keep_moving_like_dense():
    """A row seen at step 0 only keeps being updated from its memory (dense semantics)."""
    var_s, _ = _make("float32")
    var_d, _ = _make("float32")
    stream = slices_stream(TABLE, 1) + [(np.asarray([299], "int32"),
                                         np.ones((1, TABLE[1]), "float32"),
                                         np.eye(TABLE[0], 1, -299) * np.ones((1, TABLE[1])))]
    o_s, o_d = _opt(), _opt()
    _run(o_s, var_s, stream, True)
    _run(o_d, var_d, stream, False)
    np.testing.assert_allclose(var_s.numpy(), var_d.numpy(), rtol=1e-5, atol=1e-7)


def test_sparse_path_builds_no_dense_gradient():
    var, _ = _make("float32")
    opt = _opt(memory_blend_mode="attention")
    stream = slices_stream(TABLE, 1)
    step = _run(opt, var, stream, sparse=True)
    idx, vals, dense = stream[0]
    graph = step.get_concrete_function(tf.constant(idx), tf.constant(vals),
                                       tf.constant(dense)).graph
    ops_types = {op.type for op in graph.get_operations()}
    assert "TensorScatterUpdate" in ops_types                  # the sparse rules ran
    sized = [(op.type, op.name) for op in graph.get_operations()
             if op.type in ("UnsortedSegmentSum", "ScatterNd", "SparseToDense")
             and op.outputs[0].shape.as_list() == list(TABLE)]
    assert sized == []
    # the densified path (a small variable) does build one: the check can fail
    small = keras.Variable(np.zeros((10, 4), "float32"), name="small")
    opt2 = _opt(memory_blend_mode="attention")

    @tf.function(autograph=False)
    def small_step(i, v):
        opt2.apply([tf.IndexedSlices(v, i, tf.constant((10, 4), "int64"))], [small])

    g = small_step.get_concrete_function(tf.constant([1, 1, 3]),
                                         tf.zeros((3, 4))).graph
    assert any(op.type == "UnsortedSegmentSum" and op.outputs[0].shape.as_list() == [10, 4]
               for op in g.get_operations())


def test_small_tables_and_xla_densify_and_agree():
    stream = slices_stream(TABLE, 5, seed=7)
    out = []
    for jit in (False, True):
        var, _ = _make("float32")
        _run(_opt(memory_blend_mode="attention"), var, stream, sparse=True, jit=jit)
        out.append(var.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)
    small = (20, 6)
    stream = slices_stream(small, 5, seed=8, rows=8)
    res = []
    for sparse in (True, False):
        var, _ = _make("float32", shape=small)
        _run(_opt(memory_blend_mode="adaptive"), var, stream, sparse=sparse)
        res.append(var.numpy())
    np.testing.assert_allclose(res[0], res[1], rtol=1e-5, atol=1e-7)


def test_embedding_model_trains_on_the_sparse_path(monkeypatch):
    """``model.fit`` of an Embedding model: the table's gradient arrives as IndexedSlices, takes
    the sparse path, and training equals the same run with sparse gradients densified."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1000, size=(64, 6))
    y = rng.integers(0, 3, size=(64,))

    def train(force_dense):
        if force_dense:
            monkeypatch.setattr(sparse_module, "SPARSE_MIN_ELEMENTS", 10**9)
        else:
            monkeypatch.setattr(sparse_module, "SPARSE_MIN_ELEMENTS", SPARSE_MIN_ELEMENTS)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,), dtype="int32"),
                                  keras.layers.Embedding(1000, 16, name="emb"),
                                  keras.layers.GlobalAveragePooling1D(),
                                  keras.layers.Dense(3, name="out")], name="model")
        opt = NestedLearningOptimizer(learning_rate=0.01, memory_blend_mode="attention",
                                      stats_every=2, auto_schedule=False)
        seen = []
        original = sparse_module.prepare_gradient

        def spy(gradient, variable, dense_only=False):
            out = original(gradient, variable, dense_only)
            seen.append(type(out).__name__)
            return out
        monkeypatch.setattr(sparse_module, "prepare_gradient", spy)
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        stats = opt.memory_stats()
        return [w.numpy() for w in model.weights], seen, stats

    w_s, seen_s, stats_s = train(False)
    w_d, seen_d, stats_d = train(True)
    assert "RowSparse" in seen_s and "RowSparse" not in seen_d
    for a, b in zip(w_s, w_d):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    emb = next(k for k in stats_s if "emb" in k)
    for key in ("grad_norm", "norm_short", "cos_short", "update_norm"):
        assert stats_s[emb][key] == pytest.approx(stats_d[emb][key], rel=1e-4), key

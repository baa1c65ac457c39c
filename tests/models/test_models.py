"""Tests for nested_research.models (fast: small models, CPU only)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import keras

from nested_research.models import (MODEL_BUILDERS, PositionEmbedding, build_cnn, build_mlp,
                                    build_transformer)

SEED = 1234


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(SEED)
    yield


def _weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.trainable_weights]


def _check_structure(model: keras.Model) -> None:
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names)), names
    assert all("/" not in n for n in names)
    assert len(_weight_layers(model)) >= 4
    assert model.layers[-1].name == "logits"
    assert not model.compiled


def _blobs(rng, n, shape, num_classes, scale=1.0):
    """Linearly separable Gaussian blobs reshaped to `shape`."""
    dim = int(np.prod(shape))
    centers = rng.normal(size=(num_classes, dim)).astype("float32") * 2.0
    y = rng.integers(0, num_classes, size=n)
    x = centers[y] + scale * rng.normal(size=(n, dim)).astype("float32")
    return x.reshape((n,) + tuple(shape)).astype("float32"), y.astype("int32")


def _train(model, x, y, steps, lr=1e-2, batch=32, ignore_index=None):
    """Adam on masked sparse CE; returns (initial loss, final loss) on all data."""
    opt = keras.optimizers.Adam(learning_rate=lr)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def loss_fn(xb, yb, training):
        logits = model(xb, training=training)
        if ignore_index is None:
            return tf.reduce_mean(ce(yb, logits))
        mask = tf.cast(tf.not_equal(yb, ignore_index), tf.float32)
        per = ce(tf.where(yb == ignore_index, 0, yb), logits)
        return tf.reduce_sum(per * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(xb, yb, True)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    initial = float(loss_fn(x, y, False))
    rng = np.random.default_rng(SEED)
    n = len(x)
    for _ in range(steps):
        idx = rng.integers(0, n, size=batch)
        step(tf.constant(x[idx]), tf.constant(y[idx]))
    final = float(loss_fn(x, y, False))
    return initial, final


# ---------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------


def test_mlp_shapes_and_names():
    model = build_mlp((8, 8, 1), 10)
    _check_structure(model)
    assert model.name == "mlp"
    names = [layer.name for layer in _weight_layers(model)]
    assert names == ["dense_0", "dense_1", "dense_2", "logits"]
    x = np.zeros((5, 8, 8, 1), "float32")
    assert model(x).shape == (5, 10)
    assert model.output_shape == (None, 10)

    model = build_mlp((64,), 3, hidden_units=[16, 16, 16, 16], dropout=0.2,
                      activation="tanh", name="deep")
    assert [l.name for l in _weight_layers(model)] == [
        "dense_0", "dense_1", "dense_2", "dense_3", "logits"]
    assert "dropout_3" in [l.name for l in model.layers]
    assert model(np.zeros((2, 64), "float32")).shape == (2, 3)


def test_mlp_trains():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 256, (8, 8, 1), 10)
    model = build_mlp((8, 8, 1), 10, hidden_units=[64, 64, 32])
    initial, final = _train(model, x, y, steps=200, lr=3e-3)
    assert initial > 1.5
    assert final < 0.05, (initial, final)


# ---------------------------------------------------------------------------
# CNN
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,conv",
    [
        ((8, 8, 1), "Conv2D"),
        ((28, 28, 1), "Conv2D"),
        ((32, 32, 3), "Conv2D"),
        ((40,), "Conv1D"),
        ((40, 1), "Conv1D"),
    ],
)
def test_cnn_shapes_and_names(shape, conv):
    model = build_cnn(shape, 10)
    _check_structure(model)
    names = [layer.name for layer in _weight_layers(model)]
    assert names == ["conv_0", "conv_1", "conv_2", "dense_0", "logits"]
    assert all(type(model.get_layer(f"conv_{i}")).__name__ == conv for i in range(3))
    assert model(np.zeros((3,) + shape, "float32")).shape == (3, 10)
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("shape", [(1,), (1, 4), (2, 1), (1, 1, 1), (3, 3, 2), (1, 9, 1)])
def test_cnn_never_pools_below_one(shape):
    model = build_cnn(shape, 4, filters=[4, 4, 4, 4])
    for layer in model.layers:
        spatial = layer.output.shape[1:-1]
        if layer.name in ("gap", "logits", "dense_0"):
            continue
        assert all(s >= 1 for s in spatial), (layer.name, layer.output.shape)
    assert model(np.zeros((2,) + shape, "float32")).shape == (2, 4)


def test_cnn_pooling_and_head_options():
    model = build_cnn((40,), 10, global_pool="flatten", dropout=0.3)
    names = [layer.name for layer in model.layers]
    assert "flatten" in names and "gap" not in names and "dropout_0" in names
    assert model.get_layer("flatten").output.shape == (None, 10 * 64)
    model = build_cnn((8, 8, 1), 10, global_pool="max")
    assert "gmp" in [l.name for l in model.layers]
    # digits 8x8: pools after conv_0 and conv_1 only -> 2x2 before the global pool.
    assert build_cnn((8, 8, 1), 10).get_layer("conv_2").output.shape == (None, 2, 2, 64)


@pytest.mark.parametrize("shape", [(8, 8, 1), (40, 1)])
def test_cnn_trains(shape):
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 256, shape, 10)
    model = build_cnn(shape, 10, filters=[16, 16, 16], dense_units=32,
                      global_pool="flatten")
    initial, final = _train(model, x, y, steps=200, lr=3e-3)
    assert initial > 1.5
    assert final < 0.05, (initial, final)


# ---------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------


def test_transformer_shapes_and_names():
    model = build_transformer((16,), 12, vocab_size=20, d_model=32, num_heads=4,
                              num_layers=3, ff_dim=64)
    _check_structure(model)
    assert model.inputs[0].dtype == "int32"
    tokens = np.random.default_rng(0).integers(0, 20, size=(4, 16)).astype("int32")
    assert model(tokens).shape == (4, 16, 12)
    assert model.output_shape == (None, 16, 12)
    expected = ["embed", "pos_embed"]
    for i in range(3):
        expected += [f"block{i}_{s}" for s in ("ln1", "attn", "ln2", "mlp1", "mlp2")]
    expected += ["final_ln", "logits"]
    assert [l.name for l in _weight_layers(model)] == expected
    assert isinstance(model.get_layer("pos_embed"), PositionEmbedding)
    assert isinstance(model.get_layer("block2_attn"), keras.layers.MultiHeadAttention)
    paths = {v.path for v in model.trainable_variables}
    assert "block0_attn/query/kernel" in paths
    assert "block1_mlp1/kernel" in paths
    assert "pos_embed/embeddings" in paths


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_causal_mask(causal):
    L, k = 12, 7
    model = build_transformer((L,), 10, vocab_size=10, d_model=16, num_heads=2,
                              num_layers=2, ff_dim=32, causal=causal)
    rng = np.random.default_rng(2)
    a = rng.integers(0, 10, size=(3, L)).astype("int32")
    b = a.copy()
    b[:, k] = (a[:, k] + 1 + rng.integers(0, 8, size=3)) % 10
    assert np.all(a[:, k] != b[:, k])
    out_a = keras.ops.convert_to_numpy(model(a, training=False))
    out_b = keras.ops.convert_to_numpy(model(b, training=False))
    early = np.abs(out_a[:, :k] - out_b[:, :k]).max()
    late = np.abs(out_a[:, k:] - out_b[:, k:]).max()
    assert late > 1e-3  # the changed token always matters at/after its position
    if causal:
        assert early < 1e-5, early
    else:
        assert early > 1e-3, early


def test_transformer_trains_previous_token_task():
    # Per-position targets: y[t] = x[t-1], position 0 ignored (-1).
    L, V = 10, 8
    rng = np.random.default_rng(3)
    x = rng.integers(0, V, size=(512, L)).astype("int32")
    y = np.full_like(x, -1)
    y[:, 1:] = x[:, :-1]
    model = build_transformer((L,), V, vocab_size=V, d_model=32, num_heads=4,
                              num_layers=2, ff_dim=64)
    # (the loss is below 0.005 after 100 steps, 0.003 after 150)
    initial, final = _train(model, x, y, steps=150, lr=3e-3, ignore_index=-1)
    assert initial > 1.5  # ~ln(8)=2.08
    assert final < 0.05, (initial, final)


# ---------------------------------------------------------------------------
# Common: save/load, registry, arg handling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "builder,kwargs,x",
    [
        (build_mlp, dict(input_shape=(8, 8, 1), num_classes=10, dropout=0.1),
         np.random.default_rng(4).normal(size=(4, 8, 8, 1)).astype("float32")),
        (build_cnn, dict(input_shape=(40,), num_classes=10, dropout=0.1),
         np.random.default_rng(5).normal(size=(4, 40)).astype("float32")),
        (build_cnn, dict(input_shape=(8, 8, 1), num_classes=10),
         np.random.default_rng(6).normal(size=(4, 8, 8, 1)).astype("float32")),
        (build_transformer, dict(input_shape=(16,), num_classes=20, vocab_size=20,
                                 d_model=32, dropout=0.1),
         np.random.default_rng(7).integers(0, 20, size=(4, 16)).astype("int32")),
    ],
)
def test_keras_save_load_round_trip(tmp_path, builder, kwargs, x):
    model = builder(**kwargs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(x, training=False)),
        keras.ops.convert_to_numpy(loaded(x, training=False)),
    )


def test_model_builders_registry():
    from nested_research.models import build_cms_transformer, build_hope

    assert MODEL_BUILDERS == {
        "mlp": build_mlp, "cnn": build_cnn, "transformer": build_transformer,
        "cms_transformer": build_cms_transformer, "hope": build_hope}


def test_accepts_omegaconf_and_numpy_args():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"hidden_units": [16, 16, 8], "filters": [8, 8, 8]})
    m = build_mlp([8, 8, 1], np.int64(10), hidden_units=cfg.hidden_units)
    assert m.output_shape == (None, 10)
    c = build_cnn(omegaconf.ListConfig([40]), 10, filters=cfg.filters)
    assert c.output_shape == (None, 10)
    t = build_transformer((np.int64(8),), 5, vocab_size=np.int32(5), d_model=8, num_heads=2)
    assert t.output_shape == (None, 8, 5)


def test_hydra_instantiate():
    hydra_utils = pytest.importorskip("hydra.utils")
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {"_target_": "nested_research.models.build_mlp", "hidden_units": [8, 8, 8],
         "dropout": 0.1, "name": "cfg_mlp"})
    model = hydra_utils.instantiate(cfg, input_shape=(64,), num_classes=4)
    assert model.name == "cfg_mlp" and model.output_shape == (None, 4)


_GOOD = {
    "mlp": dict(input_shape=(8, 8, 1), num_classes=10),
    "cnn": dict(input_shape=(8, 8, 1), num_classes=10),
    "transformer": dict(input_shape=(16,), num_classes=10, vocab_size=10),
}

_BAD = [
    ("mlp", "num_classes", 1),
    ("mlp", "num_classes", 2.5),
    ("mlp", "hidden_units", []),
    ("mlp", "hidden_units", [32, 0]),
    ("mlp", "hidden_units", 64),
    ("mlp", "activation", "not_an_activation"),
    ("mlp", "dropout", 1.0),
    ("mlp", "dropout", -0.1),
    ("mlp", "input_shape", ()),
    ("mlp", "name", ""),
    ("cnn", "num_classes", 0),
    ("cnn", "filters", []),
    ("cnn", "kernel_size", 0),
    ("cnn", "dense_units", 0),
    ("cnn", "dropout", 1.5),
    ("cnn", "input_shape", (4, 4, 4, 1)),
    ("cnn", "input_shape", (0, 4, 1)),
    ("cnn", "global_pool", "median"),
    ("transformer", "num_classes", 1),
    ("transformer", "vocab_size", 0),
    ("transformer", "d_model", 30),  # 30 % 4 != 0
    ("transformer", "num_heads", 0),
    ("transformer", "num_layers", 0),
    ("transformer", "ff_dim", 0),
    ("transformer", "dropout", 1.0),
    ("transformer", "causal", "yes"),
    ("transformer", "input_shape", (16, 1)),
]


@pytest.mark.parametrize("kind,param,value", _BAD)
def test_bad_args_raise_value_error_naming_param(kind, param, value):
    kwargs = dict(_GOOD[kind])
    kwargs[param] = value
    with pytest.raises(ValueError) as excinfo:
        MODEL_BUILDERS[kind](**kwargs)
    msg = str(excinfo.value)
    # One wording everywhere: "<param>=<value!r> must be <what is allowed>".
    assert f"{param}={value!r} must be " in msg, msg

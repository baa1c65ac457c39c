"""``optimizer=muon``: Keras' Muon composed by the config group, with the variables Muon cannot
take routed to its AdamW step as Keras documents (non-2-D variables, embeddings, the output
layer ``logits``)."""

import numpy as np
import keras

from nested_research.training.builders import build_optimizer
from nested_research.models import build_cnn, build_mlp
from nested_research.studies.runner import compose


def _muon(*overrides):
    cfg = compose(["optimizer=muon", "lr_schedule=constant", "logger=none", *overrides])
    return build_optimizer(cfg, steps_per_epoch=10, total_steps=100, stats_every=0)


def _spread(matrix):
    s = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    return s.max() / s.min()


def test_the_group_builds_keras_muon_with_the_output_layer_excluded():
    opt = _muon()
    assert isinstance(opt, keras.optimizers.Muon)
    assert opt.exclude_layers == ["logits"] and opt.exclude_embeddings is True


def test_a_2d_kernel_update_is_orthogonalised_and_the_excluded_ones_are_adamw():
    opt = _muon("optimizer.params.weight_decay=0.0", "optimizer.params.adam_weight_decay=0.0")
    model = build_mlp((8,), 6, hidden_units=[32])
    cnn = build_cnn((16,), 4, filters=[4], kernel_size=3, dense_units=8, global_pool="flatten")
    variables = model.trainable_variables + cnn.trainable_variables
    rng = np.random.default_rng(0)
    # gradients with an uneven spectrum: a strong rank-one part plus noise
    grads = []
    for v in variables:
        shape = tuple(v.shape)
        g = rng.normal(size=shape)
        if len(shape) == 2:
            g += 5.0 * np.outer(rng.normal(size=shape[0]), rng.normal(size=shape[1]))
        grads.append(g.astype("float32"))
    before = [v.numpy().copy() for v in variables]
    opt.apply(grads, variables)
    step = {(v.path, tuple(v.shape)): (b - v.numpy(), g)
            for v, b, g in zip(variables, before, grads)}
    kernel, g_kernel = step[("dense_0/kernel", (8, 32))]
    assert _spread(g_kernel) > 10           # the gradient is far from orthogonal
    assert _spread(kernel) < 3              # Newton-Schulz flattened its spectrum
    # the excluded output layer and the 3-D conv kernel take AdamW's first step,
    # lr * g / (|g| + eps) elementwise
    for key in (("logits/kernel", (32, 6)), ("conv_0/kernel", (3, 1, 4))):
        update, g = step[key]
        np.testing.assert_allclose(update, 1e-3 * np.sign(g), rtol=1e-3, atol=1e-7)

"""Fault injection for the non-finite tests: layers that make a chosen step's loss or gradient
NaN/inf, and a model builder the Hydra entry point can instantiate
(``model._target_=faults.build_nan_mlp`` with ``tests/`` on ``PYTHONPATH``)."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from nested_research.models import build_mlp


@tf.custom_gradient
def _scale_gradient(h, p):
    def grad(dy):
        return dy * p, tf.zeros_like(p)

    return tf.identity(h), grad


@keras.saving.register_keras_serializable(package="nested_research_tests")
class Poison(keras.layers.Layer):
    """``[h, p] -> h`` with a per-sample factor ``p`` of shape ``(batch, 1)`` (1: no fault).

    ``target="grad"``: the forward pass is the identity, the gradient to ``h`` is multiplied by
    ``p`` (``p = inf`` or ``nan``: non-finite gradients upstream, finite loss).
    ``target="loss"``: the output is ``h * p`` (the loss, and so every gradient, non-finite).
    Data-driven, so a fault can hit one sample, hence one replica under a strategy.
    """

    def __init__(self, target: str = "grad", **kwargs):
        super().__init__(**kwargs)
        if target not in ("grad", "loss"):
            raise ValueError(f"target={target!r} is not 'grad' or 'loss'")
        self.target = target

    def call(self, inputs):
        h, p = inputs
        p = ops.cast(ops.reshape(p, (-1, 1)), h.dtype)
        if self.target == "loss":
            return h * p
        return _scale_gradient(h, p)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "target": self.target}


@keras.saving.register_keras_serializable(package="nested_research_tests")
class NanAt(keras.layers.Layer):
    """Identity, except that on chosen training calls (1-based) it adds NaN to its input.

    ``steps``: those calls; ``from_step`` (> 0): every call from that one on.  Evaluation
    (``training`` false) is never touched.  Counts calls in a non-trainable weight.
    """

    def __init__(self, steps=(), from_step: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.steps = [int(s) for s in steps]
        self.from_step = int(from_step)

    def build(self, input_shape):
        self.calls = self.add_weight(name="calls", shape=(), dtype="int32",
                                     initializer="zeros", trainable=False)

    def call(self, x, training=None):
        if not training:
            return x
        self.calls.assign_add(1)
        n = self.calls.value
        bad = ops.convert_to_tensor(False)
        for s in self.steps:
            bad = ops.logical_or(bad, ops.equal(n, s))
        if self.from_step > 0:
            bad = ops.logical_or(bad, ops.greater_equal(n, self.from_step))
        return x + ops.cast(ops.where(bad, float("nan"), 0.0), x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "steps": self.steps, "from_step": self.from_step}


def build_nan_mlp(input_shape, num_classes, nan_steps=(), nan_from_step: int = 0,
                  **mlp_kwargs) -> keras.Model:
    """``build_mlp`` with NaN logits on training steps ``nan_steps`` / from ``nan_from_step``."""
    base = build_mlp(input_shape, num_classes, **mlp_kwargs)
    out = NanAt(nan_steps, nan_from_step, name="nan_at")(base.output)
    return keras.Model(base.input, out, name=base.name)

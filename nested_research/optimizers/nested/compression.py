"""Low-rank gradient compression.

A gradient ``G`` of rank >= 2 is viewed as the matrix ``G2`` of shape
``(prod(shape[:-1]), shape[-1])`` and replaced by its best rank-``r``
approximation in the Frobenius norm (Eckart-Young), the truncated SVD::

    G2 = U S V^T   ->   G2_r = U[:, :r] S[:r] V[:, :r]^T

reshaped back.  1-D and scalar gradients, and matrices whose smaller side is
<= r, pass through unchanged.

NOTE: the seed names ``use_gradient_compression``/``compression_rank`` but not
the method; the truncated SVD is the exact optimum the name suggests.  The
optimizer compresses the gradient that enters the memory (after accumulation),
so a slow layer pays for one SVD per applied update.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from nested_research.core.hparams import HParams, boolean, integer, param


@dataclasses.dataclass(frozen=True)
class CompressionParams(HParams):
    """Low-rank gradient compression (optimizer keywords; ``optimizer.params`` in Hydra)."""

    use_gradient_compression: bool = param(False, boolean())
    compression_rank: int = param(None, integer(1, optional=True))

    def validate(self) -> None:
        if self.use_gradient_compression and self.compression_rank is None:
            raise ValueError("compression_rank=None must be an integer >= 1 when "
                             "use_gradient_compression=True")


def low_rank(gradient, rank: int):
    """Rank-``rank`` approximation of ``gradient`` (see the module docstring): TensorFlow's SVD
    on TensorFlow, ``keras.ops.svd`` on the other backends (the same product; singular
    vectors' signs cancel in it)."""
    shape = tuple(gradient.shape)
    if len(shape) < 2:
        return gradient
    rows, cols = int(math.prod(shape[:-1])), int(shape[-1])
    if min(rows, cols) <= rank:
        return gradient
    if keras.backend.backend() != "tensorflow":
        u, s, vh = ops.svd(ops.reshape(gradient, (rows, cols)), full_matrices=False)
        return ops.reshape(ops.matmul(u[:, :rank] * s[:rank], vh[:rank, :]), shape)
    import tensorflow as tf  # (imported here: the rest of the optimizer runs on any backend)

    matrix = tf.reshape(gradient, (rows, cols))
    s, u, v = tf.linalg.svd(matrix, full_matrices=False)
    approx = tf.matmul(u[:, :rank] * s[:rank], v[:, :rank], transpose_b=True)
    return tf.reshape(approx, shape)

"""Row-sparse gradients (``tf.IndexedSlices`` from embedding lookups) for the update rules.

A row-sparse gradient ``g`` holds rows ``values`` at row ``indices`` of its
variable and is zero everywhere else.  Every elementwise rule of the optimizer
(the memory EMAs, Adam's moments, the effective gradient) is a function
``f(g, x_1, ..., x_k)`` of the gradient and of state tensors of the same
shape, so for a sparse ``g``::

    f(g, x)          = f(0, x)                   on the rows g does not touch
    f(g, x)[indices] = f(values, x[indices])     on the rows it does

``rowwise`` computes exactly that: one dense pass of ``f`` with the scalar 0
in place of ``g`` (the state still decays everywhere) and ``f`` on the
gathered rows, scattered over it.  Elementwise, the operations are those of
the dense rule, so the result equals it bit for bit; no table-sized gradient
is ever made.  Inner products with ``g`` only read its rows (``vdot``).

Duplicate indices (a token that occurs twice in a batch) are merged first
(``from_indexed_slices``: ``unique`` and a segment sum), as the dense
equivalent of ``IndexedSlices`` sums them.  ``unique`` has a data-dependent
shape, which XLA cannot compile: under ``jit_compile=True`` the optimizer
densifies sparse gradients instead (``NestedLearningOptimizer.update_step``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from keras import ops


class RowSparse(NamedTuple):
    """``values`` (rows, *row shape) at distinct row ``indices`` of a tensor of ``shape``."""

    values: object
    indices: object
    shape: tuple

    @property
    def dtype(self):
        return self.values.dtype


def is_indexed_slices(gradient) -> bool:
    return hasattr(gradient, "indices") and hasattr(gradient, "values")


def from_indexed_slices(slices, shape, dtype) -> RowSparse:
    """``IndexedSlices`` as ``RowSparse`` with duplicate rows summed (graph mode only)."""
    import tensorflow as tf

    values = tf.cast(slices.values, dtype)
    unique, position = tf.unique(slices.indices)
    values = tf.math.unsorted_segment_sum(values, position, tf.shape(unique)[0])
    return RowSparse(values, unique, tuple(shape))


def densify_slices(slices):
    """The dense tensor of ``IndexedSlices`` (duplicate rows summed)."""
    import tensorflow as tf

    return tf.convert_to_tensor(slices)


def to_dense(g):
    """The dense tensor of a ``RowSparse`` (a dense ``g`` is returned as it is)."""
    if not isinstance(g, RowSparse):
        return g
    return ops.scatter(ops.expand_dims(g.indices, 1), g.values, g.shape)


def as_indexed_slices(g: RowSparse):
    """``g`` as ``tf.IndexedSlices`` (for a variable's scatter-add)."""
    import tensorflow as tf

    return tf.IndexedSlices(g.values, g.indices, tf.constant(g.shape, "int64"))


def rowwise(fn: Callable, g: RowSparse, *state):
    """``fn(g, *state)`` for a row-sparse ``g``, as the module docstring says."""
    import tensorflow as tf

    dense = fn(0.0, *state)
    rows = fn(g.values, *[tf.gather(x, g.indices) for x in state])
    return tf.tensor_scatter_nd_update(dense, ops.expand_dims(g.indices, 1), rows)


def gather(x, indices):
    """Rows ``indices`` of ``x``."""
    import tensorflow as tf

    return tf.gather(x, indices)


def vdot(g: RowSparse, x):
    """``<g, x>`` reading only ``g``'s rows of ``x``."""
    import tensorflow as tf

    return ops.sum(g.values * tf.gather(x, g.indices))


def sq_norm(g: RowSparse):
    """``<g, g>`` (rows are distinct, so this is the sum of the squared values)."""
    return ops.sum(ops.square(g.values))

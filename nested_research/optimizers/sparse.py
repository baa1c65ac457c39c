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
densifies sparse gradients instead (``prepare_gradient``).

The optimizer writes every state update through ``read`` / ``store`` /
``elementwise`` / ``accumulate``, which take a dense or a row-sparse
gradient alike, and a state variable whose dtype is narrower than the
variable's (bfloat16 state: widened on read, rounded to nearest on store).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import keras
from keras import ops

#: Row-sparse gradients of variables with more elements than this stay sparse (graph mode);
#: a smaller table costs its ops, not its bytes, and is densified.
SPARSE_MIN_ELEMENTS = 1 << 13


class RowSparse(NamedTuple):
    """``values`` (rows, *row shape) at distinct row ``indices`` of a tensor of ``shape``."""

    values: object
    indices: object
    shape: tuple

    @property
    def dtype(self):
        return self.values.dtype


def is_indexed_slices(gradient) -> bool:
    """A row-sparse gradient of the backend (TensorFlow's ``IndexedSlices``, by its fields:
    the backends declare no common type)."""
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
    """``fn(g, *state)`` for a row-sparse ``g``, as the module docstring says.  A state tensor
    may carry leading axes before ``g``'s shape (the stacked tiers): its rows are gathered
    along the first axis of ``g``'s shape, and so is the result scattered."""
    import tensorflow as tf

    dense = fn(0.0, *state)
    rows = fn(g.values, *[gather(x, g.indices, len(x.shape) - len(g.shape)) for x in state])
    lead = tuple(dense.shape[:len(dense.shape) - len(g.shape)])
    if not lead:
        return tf.tensor_scatter_nd_update(dense, ops.expand_dims(g.indices, 1), rows)
    # one (leading index, row) pair per updated slice: no transposes
    k = tf.shape(g.indices)[0]
    grid = tf.stack(tf.meshgrid(*[tf.range(d) for d in lead], indexing="ij"), -1)
    grid = tf.reshape(grid, (-1, len(lead)))                                  # (L, lead)
    pairs = tf.concat([tf.repeat(grid, k, axis=0),
                       tf.reshape(tf.tile(tf.cast(g.indices[:, None], grid.dtype),
                                          (grid.shape[0], 1)), (-1, 1))], axis=1)
    flat = tf.reshape(rows, tf.concat([[-1], tf.shape(rows)[len(lead) + 1:]], 0))
    return tf.tensor_scatter_nd_update(dense, pairs, flat)


def gather(x, indices, axis: int = 0):
    """Rows ``indices`` of ``x`` (along ``axis``)."""
    import tensorflow as tf

    return tf.gather(x, indices, axis=axis)


def vdot(g: RowSparse, x):
    """``<g, x>`` reading only ``g``'s rows of ``x``."""
    import tensorflow as tf

    return ops.sum(g.values * tf.gather(x, g.indices))


def sq_norm(g: RowSparse):
    """``<g, g>`` (rows are distinct, so this is the sum of the squared values)."""
    return ops.sum(ops.square(g.values))


# ---------------------------------------------------------------- the optimizer's access
def in_xla_context() -> bool:
    """Whether the step is being traced for XLA (``jit_compile=True``); a trace-time fact."""
    if keras.backend.backend() == "jax":
        return True
    if keras.backend.backend() != "tensorflow":
        return False
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))
    except (ImportError, AttributeError):  # private TF API moved: take the graph-mode form
        return False


def prepare_gradient(gradient, variable, dense_only: bool = False):
    """The gradient in the variable's dtype and static shape: a dense tensor, or a
    ``RowSparse`` for ``IndexedSlices`` of a variable above ``SPARSE_MIN_ELEMENTS`` elements in
    graph mode (not under XLA, whose compiler cannot merge duplicate rows, and not when
    ``dense_only``: the low-rank projection needs the matrix)."""
    dtype = variable.dtype
    if is_indexed_slices(gradient):
        if math.prod(variable.shape) > SPARSE_MIN_ELEMENTS and not dense_only and \
                not in_xla_context():
            return from_indexed_slices(gradient, variable.shape, dtype)
        gradient = densify_slices(gradient)
    gradient = ops.convert_to_tensor(gradient)
    if tuple(gradient.shape) != tuple(variable.shape):
        gradient = ops.reshape(gradient, variable.shape)  # densified slices lose the shape
    return gradient if gradient.dtype == dtype else ops.cast(gradient, dtype)


def num_elements(g) -> int:
    return int(math.prod(g.shape))


def read(var, dtype):
    """A state variable's current value (one read: later assignments leave it) in ``dtype``."""
    value = var.value
    return value if value.dtype == dtype else ops.cast(value, dtype)


def elementwise(fn: Callable, g, *state):
    """``fn(g, *state)``, for a dense or a row-sparse ``g`` (``rowwise``); ``state``: tensors
    of ``g``'s shape (leading axis: rows), nothing else."""
    if isinstance(g, RowSparse):
        return rowwise(fn, g, *state)
    return fn(g, *state)


def store(opt, var, fn: Callable, g, old):
    """``var <- fn(g, old)``; returns the new value (unrounded, in ``old``'s dtype).

    A row-sparse ``g`` on a full-precision variable takes the dense pass ``fn(0, old)`` and
    then its rows in place (a scatter into the variable: no second table-sized tensor); the
    variable is returned (reads after this see the new value).
    """
    if isinstance(g, RowSparse) and var.dtype == old.dtype and \
            len(var.shape) == len(g.shape):
        rows = fn(g.values, gather(old, g.indices))
        opt.assign(var, fn(0.0, old))
        opt.assign(var, as_indexed_slices(g._replace(values=rows)))  # scatter-update
        return var
    new = elementwise(fn, g, old)
    opt.assign(var, new if new.dtype == var.dtype else ops.cast(new, var.dtype))
    return new


def accumulate(opt, acc, g) -> None:
    """``acc <- acc + g`` (a scatter-add for a row-sparse ``g``; a bfloat16 ``acc`` adds in
    ``g``'s dtype and rounds once)."""
    if acc.dtype != g.dtype:
        total = elementwise(lambda g_, a_: a_ + g_, g, read(acc, g.dtype))
        opt.assign(acc, ops.cast(total, acc.dtype))
    elif isinstance(g, RowSparse):
        opt.assign_add(acc, as_indexed_slices(g))
    else:
        opt.assign_add(acc, g)

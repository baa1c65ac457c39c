"""Depth of every trainable variable of a Keras model, counted from the input.

A *weighted* layer (one with trainable variables) at the input side has depth
0; each weighted layer on the longest path from the inputs adds one.  Layers
without variables (activations, pooling, reshapes, ``Add``) do not count.

- Functional and Sequential models: longest path through the layer graph, so a
  branch's depth is that of its longest ancestor chain.
- Shared layers (called more than once): the smallest depth among their calls
  (the variable's update interval is one number; the input-most call decides).
- Nested models: recursed into, their layers offset by the depth at which the
  nested model is called.
- Subclassed models (no graph to read): their tracked layers in attribute order
  stand for the data flow, each weighted layer one deeper than the last,
  recursing into nested models.

A non-model layer that owns sublayers (``MultiHeadAttention``, a custom block)
is one unit: all its variables share its depth.
"""

from __future__ import annotations

import keras


def _has_weights(layer) -> bool:
    return bool(getattr(layer, "trainable_weights", None))


def _assign(layer, depth: int, out: dict[str, int]) -> None:
    for v in layer.trainable_weights:
        out[v.path] = min(out.get(v.path, depth), depth)


def _span(layer, depth: int, out: dict[str, int]) -> int:
    """Assign depths inside ``layer`` starting at ``depth``; return the depth after it."""
    if isinstance(layer, keras.Model):
        return depth + _model_depths(layer, depth, out)
    if _has_weights(layer):
        _assign(layer, depth, out)
        return depth + 1
    return depth


def _model_depths(model, offset: int, out: dict[str, int]) -> int:
    """Fill ``out`` for ``model`` with depths starting at ``offset``; return its depth span."""
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if not nodes_by_depth:  # subclassed: attribute order stands for data flow
        depth = offset
        for layer in model.layers:
            depth = _span(layer, depth, out)
        return depth - offset

    own = {id(n) for nodes in nodes_by_depth.values() for n in nodes}
    level_after: dict[int, int] = {}
    deepest = offset
    for key in sorted(nodes_by_depth, reverse=True):  # inputs first
        for node in nodes_by_depth[key]:
            parents = [p for p in node.parent_nodes if id(p) in own]
            start = max((level_after[id(p)] for p in parents), default=offset)
            op = node.operation
            end = start if (op is None or node.is_input) else _span(op, start, out)
            level_after[id(node)] = end
            deepest = max(deepest, end)
    return deepest - offset


def compute_depths(model) -> dict[str, int]:
    """``{variable.path: depth}`` for every trainable variable of ``model``.

    Variables the graph walk cannot reach (e.g. created outside any layer) get
    one depth past the deepest layer, so they update every step by default.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"compute_depths_from_model expects a keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError(
            f"model {model.name!r} is not built: call it on data or build it "
            "(e.g. pass an Input) before computing depths")
    out: dict[str, int] = {}
    span = _model_depths(model, 0, out)
    for v in model.trainable_variables:
        out.setdefault(v.path, span)
    return {v.path: out[v.path] for v in model.trainable_variables}

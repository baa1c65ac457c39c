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

from nested_research.core import checks


def _has_weights(layer) -> bool:
    # (a node's operation need not be a Layer: Keras ops in a functional model have no weights)
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
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)  # (Keras: functional models only)
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


class DepthRegistry:
    """The optimizer's depth registration and interval resolution (mixed into optimizers that
    schedule layers by depth; needs ``hparams["intervals"]``, an ``intervals.IntervalParams``).

    Depths are keyed by variable path; ``intervals`` and ``longest_interval`` are known once
    the optimizer is built.
    """

    def _init_depths(self, depths) -> None:
        self._variable_depths = {str(k): int(v) for k, v in (depths or {}).items()}
        self._intervals: list[int] = []  # per variable, assigned by build

    def _require_unbuilt(self, what: str) -> None:
        if self.built:
            raise RuntimeError(
                f"{what}: the optimizer is already built and its update intervals are fixed; "
                "register depths before the first training step (before model.fit)")

    def compute_depths_from_model(self, model) -> dict[str, int]:
        """Assign every trainable variable of ``model`` its depth; return the map."""
        self._require_unbuilt("compute_depths_from_model")
        depths = compute_depths(model)
        self._variable_depths.update(depths)
        return dict(depths)

    def register_variable_depth(self, variable, depth: int) -> None:
        """Set the depth of one variable (keyed by its path)."""
        self._require_unbuilt("register_variable_depth")
        self._variable_depths[variable.path] = checks.check_int("depth", depth, 0)

    def register_layer_depth(self, layer, depth: int) -> None:
        """Set the depth of every trainable variable of ``layer``."""
        if not layer.trainable_weights:
            raise ValueError(f"register_layer_depth: layer {layer.name!r} has no trainable "
                             "variables (build it first)")
        for v in layer.trainable_weights:
            self.register_variable_depth(v, depth)

    @property
    def variable_depths(self) -> dict[str, int]:
        return dict(self._variable_depths)

    def depth_of(self, path: str):
        """The registered depth of ``path`` (``None`` if unknown); a unique suffix match also
        counts: Keras drops a Sequential model's name from its variable paths when it is
        reloaded (``mlp/dense_0/kernel`` -> ``dense_0/kernel``)."""
        if path in self._variable_depths:
            return self._variable_depths[path]
        hits = [d for key, d in self._variable_depths.items()
                if key.endswith("/" + path) or path.endswith("/" + key)]
        return hits[0] if len(hits) == 1 else None

    def _resolve_intervals(self, var_list) -> list[int]:
        from nested_research.optimizers.nested import intervals

        paths = [v.path for v in var_list]
        return intervals.resolve(self.hparams["intervals"], paths, self.depth_of)

    def planned_intervals(self, var_list) -> list[int]:
        """The intervals ``var_list`` would get if the optimizer were built on it now (no
        warnings; the optimizer stays unbuilt)."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._resolve_intervals(var_list)

    @property
    def intervals(self) -> dict[str, int]:
        """``{variable path: update interval}`` (after the optimizer is built)."""
        if not self.built:
            raise RuntimeError("intervals are assigned when the optimizer is built")
        return {v.path: k for v, k in zip(self._trainable_variables, self._intervals)}

    @property
    def longest_interval(self) -> int:
        """The largest update interval of any variable (1 before the optimizer is built)."""
        return max(self._intervals, default=1)

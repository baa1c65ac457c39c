"""Per-variable update intervals: depth curves, manual patterns, the step rule.

Depth curves (``auto_schedule=True``).  A variable at depth ``d`` in a model
whose deepest registered depth is ``D`` gets the *slowness* ``s`` and the
interval ``k`` (``K = max_interval``)::

    p = d / D                      (p = 0 when D = 0)
    s = 1 - p    if reverse_depth_order else   p
    linear:       k = 1 + (K - 1) * s
    exponential:  k = K ** s
    cosine:       k = 1 + (K - 1) * (1 - cos(pi * s)) / 2
    k = clip(round(k), 1, K)

So with ``reverse_depth_order=True`` (the default) depth 0, the input side,
updates every ``K`` steps and the deepest layer every step.

NOTE: the seed's parameter table says ``reverse_depth_order=True`` makes
*deeper* layers slower, but its examples ("depth=0  # Slowest updates") and its
prose (early layers learn general features that stabilise early) make the
input-side layers the slowest.  We follow the examples and prose.

Manual patterns (``auto_schedule=False``).  ``layer_update_intervals`` is an
ordered list of ``(regex, interval)`` pairs (a dict keeps its order) matched
with ``re.search`` against each variable's full path
(e.g. ``encoder/dense_1/kernel``); the first match wins and
``default_interval`` covers the rest.  Patterns that match no variable are
reported (coverage check) with a warning.

Step rule.  With global step ``t`` (0-based, the optimizer's ``iterations``
before the update) and ``warmup_steps`` ``W``, a variable with interval ``k``
applies an update at ``t`` iff ``t < W`` or ``(t - W + 1) % k == 0``: every
step during warmup, then on the k-th, 2k-th, ... step after it, so that an
accumulation window always holds exactly ``k`` gradients.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Callable, Iterable, Mapping, Sequence

from nested_research.core.hparams import HParams, boolean, choice, integer, param

CURVES = ("linear", "exponential", "cosine")


def _depth_map(name, value):
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(d, int) and not isinstance(d, bool) and d >= 0
            for k, d in value.items()):
        raise ValueError(f"{name}={value!r} must be a dict {{variable path: integer depth >= 0}} "
                         "(or None)")
    return dict(value)


@dataclasses.dataclass(frozen=True)
class IntervalParams(HParams):
    """Per-layer update intervals (Hydra group ``schedule_curve``)."""

    auto_schedule: bool = param(True, boolean())
    max_interval: int = param(6, integer(1))
    schedule_curve: str = param("cosine", choice(CURVES))
    reverse_depth_order: bool = param(True, boolean())
    warmup_steps: int = param(0, integer(0))
    accumulate_gradients: bool = param(True, boolean())
    layer_update_intervals: list = param(None, lambda name, v: normalize_patterns(v))
    default_interval: int = param(1, integer(1))
    #: ``{variable path: depth}`` the optimizer starts with (``compute_depths_from_model`` and
    #: ``register_*`` add to it; saved in the config so a reloaded optimizer keeps them).
    variable_depths: dict = param(None, _depth_map)


def curve_interval(depth: int, max_depth: int, max_interval: int, curve: str,
                   reverse_depth_order: bool = True) -> int:
    """Interval of a variable at ``depth`` (see the module docstring)."""
    if curve not in CURVES:
        raise ValueError(f"schedule_curve={curve!r} is not one of {CURVES}")
    p = depth / max_depth if max_depth > 0 else 0.0
    s = 1.0 - p if reverse_depth_order else p
    k_max = float(max_interval)
    if curve == "linear":
        k = 1.0 + (k_max - 1.0) * s
    elif curve == "exponential":
        k = k_max ** s
    else:
        k = 1.0 + (k_max - 1.0) * (1.0 - math.cos(math.pi * s)) / 2.0
    # Round half up, robustly against 2.4999999 float noise.
    return int(min(max(math.floor(k + 0.5 + 1e-9), 1), max_interval))


def normalize_patterns(patterns) -> list[tuple[str, int]]:
    """``layer_update_intervals`` as a validated ordered list of pairs."""
    if patterns is None:
        return []
    if isinstance(patterns, Mapping):
        items = list(patterns.items())
    else:
        items = []
        for item in patterns:
            if not (isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2):
                raise ValueError(
                    "layer_update_intervals must be a dict or a list of (pattern, interval) "
                    f"pairs; got the item {item!r}")
            items.append((item[0], item[1]))
    out = []
    for pattern, interval in items:
        if not isinstance(pattern, str):
            raise ValueError(
                f"layer_update_intervals: pattern {pattern!r} is a {type(pattern).__name__}; "
                "patterns must be strings (regular expressions searched in variable paths)")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(
                f"layer_update_intervals: pattern {pattern!r} is not a valid regular "
                f"expression ({err})") from None
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f"layer_update_intervals[{pattern!r}]={interval!r}: intervals must be integers >= 1")
        out.append((pattern, int(interval)))
    return out


def pattern_intervals(paths: Iterable[str], patterns: Sequence[tuple[str, int]],
                      default_interval: int, warn_unused: bool = True) -> dict[str, int]:
    """First-match-wins intervals for ``paths``; warns about patterns that match nothing."""
    compiled = [(re.compile(p), p, k) for p, k in patterns]
    used = set()
    result = {}
    for path in paths:
        result[path] = default_interval
        for regex, raw, k in compiled:
            if regex.search(path):
                result[path] = k
                used.add(raw)
                break
    unused = [p for _, p, _ in compiled if p not in used]
    if warn_unused and unused:
        warnings.warn(
            f"layer_update_intervals: pattern(s) {unused} matched no variable "
            f"(variables: {sorted(result)[:12]}{' ...' if len(result) > 12 else ''})",
            stacklevel=3)
    return result


def auto_intervals(depths: Mapping[str, int], max_interval: int, curve: str,
                   reverse_depth_order: bool) -> dict[str, int]:
    """Curve intervals for every path in ``depths`` (max depth taken over ``depths``)."""
    if not depths:
        return {}
    max_depth = max(depths.values())
    return {path: curve_interval(d, max_depth, max_interval, curve, reverse_depth_order)
            for path, d in depths.items()}


def is_update_step(step, interval: int, warmup_steps: int):
    """The step rule (module docstring), the one copy of it: ``step`` (0-based) is an integer
    tensor in the training step, or a Python or NumPy integer (array) on the host (the tracker's
    schedule report); the result is a boolean of the same kind."""
    after = (step - warmup_steps + 1) % interval == 0
    if warmup_steps <= 0:
        return after
    return (step < warmup_steps) | after


def applied_updates(step: int, interval: int, warmup_steps: int) -> int:
    """How many updates a variable has applied after ``step`` steps (host-side)."""
    if step <= warmup_steps:
        return step
    return warmup_steps + (step - warmup_steps) // interval


def resolve(p: IntervalParams, paths: Sequence[str], depth_of: Callable) -> list[int]:
    """The interval of each path: manual patterns, or the depth curve of the known depths."""
    if not p.auto_schedule:
        by_path = pattern_intervals(paths, p.layer_update_intervals, p.default_interval)
        return [by_path[path] for path in paths]
    known = {path: d for path in paths if (d := depth_of(path)) is not None}
    if not known and p.max_interval > 1:
        warnings.warn(
            "NestedLearningOptimizer: auto_schedule=True but no layer depths are known; "
            "every variable updates every step. Call "
            "optimizer.compute_depths_from_model(model) before training.", stacklevel=4)
    by_path = auto_intervals(known, p.max_interval, p.schedule_curve, p.reverse_depth_order)
    return [by_path.get(path, 1) for path in paths]


def interval_step(opt, step, interval: int, warmup_steps: int, accumulator, g,
                  apply: Callable, state: Sequence = ()) -> None:
    """Run ``apply(g_hat)`` on the steps the rule allows; accumulate ``g`` on the others.

    ``interval == 1``: every step.  Else a conditional on the step rule
    (``conditional.cond_assign``: a ``cond`` on TensorFlow, whose taken branch alone holds the
    update math; compute-then-select on JAX), over ``state``: every variable ``apply``
    assigns (the accumulator is added here).  Without an ``accumulator`` the skipped steps
    drop ``g``; with one, ``g_hat`` is the mean of the window's gradients (``accumulator``
    holds their sum, in its own dtype: a bfloat16 accumulator adds in full precision and
    rounds once).  ``g`` may be row-sparse (``sparse.py``).
    """
    from keras import ops

    from nested_research.optimizers import sparse
    from nested_research.optimizers.conditional import cond_assign

    if interval == 1:
        apply(g)
        return
    due = is_update_step(step, interval, warmup_steps)
    if accumulator is None:
        cond_assign(due, lambda: apply(g), None, state)
        return
    dtype = g.dtype

    def apply_window():
        n = float(interval) if warmup_steps <= 0 else \
            ops.where(ops.less(step, warmup_steps), 1.0, float(interval))
        total = sparse.elementwise(_add, g, sparse.read(accumulator, dtype))
        apply(total / ops.cast(n, dtype))
        opt.assign(accumulator, ops.zeros_like(accumulator))

    def accumulate():
        sparse.accumulate(opt, accumulator, g)

    cond_assign(due, apply_window, accumulate, [*state, accumulator])


def _add(g, a):
    return a + g

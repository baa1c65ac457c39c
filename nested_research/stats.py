"""Per-layer statistics of a ``NestedLearningOptimizer``, read on the host.

A layer is a variable path without its last component
(``sequential/dense_1/kernel`` -> ``sequential/dense_1``).  Norms over a layer
are taken over all its variables together (``sqrt(sum of squares)``);
cosines are ``sum <g, M> / sqrt(sum |g|^2 * sum |M|^2)`` over the layer;
retrieval weights are averaged over the layer's variables weighted by size.

Fields (``None`` where the configuration has no such quantity):

    depth, interval, applied_updates, steps_since_update
    accum_norm                      norm of the pending accumulated gradient sum
    v_rms                           sqrt(mean second moment)
    norm_short/medium/long          tier norms (memory off: norm_short = first moment)
    weight_short/medium/long        retrieval weights
    cos_short/medium/long           cosine(gradient, tier)      (stats_every > 0)
    grad_norm, update_norm, param_norm, update_ratio, stats_step  (stats_every > 0)

Everything here reads optimizer variables; nothing runs in the training step.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from nested_research.memory import TIERS

FIELDS = (
    "depth", "interval", "applied_updates", "steps_since_update", "accum_norm", "v_rms",
    "norm_short", "norm_medium", "norm_long",
    "weight_short", "weight_medium", "weight_long",
    "cos_short", "cos_medium", "cos_long",
    "grad_norm", "update_norm", "param_norm", "update_ratio", "stats_step",
)


def layer_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


def last_update_step(iterations: int, interval: int, warmup_steps: int) -> int | None:
    """The last global step (0-based) < ``iterations`` on which the interval rule applies."""
    if iterations <= 0:
        return None
    last = iterations - 1
    if last < warmup_steps:
        return last
    windows = (last - warmup_steps + 1) // interval
    if windows >= 1:
        return warmup_steps - 1 + windows * interval
    return warmup_steps - 1 if warmup_steps > 0 else None


def _sq(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.sum(x * x))


def layer_stats(opt) -> "OrderedDict[str, dict]":
    """``{layer: {field: value}}`` for every layer the optimizer updates."""
    if not opt.built:
        raise RuntimeError("memory_stats: the optimizer is not built yet (no step taken)")
    from nested_research.optimizer import STAT_FIELDS

    iterations = int(np.asarray(opt.iterations))
    groups: "OrderedDict[str, list[int]]" = OrderedDict()
    for i, var in enumerate(opt._trainable_variables):
        groups.setdefault(layer_of(var.path), []).append(i)
    col = {name: j for j, name in enumerate(STAT_FIELDS)}
    out = OrderedDict()
    for layer, idxs in groups.items():
        vars_ = [opt._trainable_variables[i] for i in idxs]
        sizes = np.array([max(int(np.prod(v.shape)), 1) for v in vars_], dtype=np.float64)
        row = dict.fromkeys(FIELDS)
        depths = [opt._depth_of(v.path) for v in vars_]
        row["depth"] = min(d for d in depths if d is not None) if any(
            d is not None for d in depths) else None
        row["interval"] = max(opt._intervals[i] for i in idxs)
        row["applied_updates"] = int(min(float(np.asarray(opt._update_counts[i])) for i in idxs))
        last = last_update_step(iterations, row["interval"], opt.warmup_steps)
        row["steps_since_update"] = None if last is None else iterations - 1 - last
        accs = [opt._accumulators[i] for i in idxs if opt._accumulators[i] is not None]
        row["accum_norm"] = math.sqrt(sum(_sq(a) for a in accs)) if accs else 0.0
        v_sum = sum(float(np.sum(np.asarray(opt._velocities[i], np.float64))) for i in idxs)
        row["v_rms"] = math.sqrt(max(v_sum, 0.0) / float(sizes.sum()))
        for tier_vars, tier in zip(opt._memories, TIERS):
            row[f"norm_{tier}"] = math.sqrt(sum(_sq(tier_vars[i]) for i in idxs))
        if opt.memory_blend_mode == "fixed":
            for tier, w in zip(TIERS, opt.fixed_weights):
                row[f"weight_{tier}"] = w
        elif opt.memory_blend_mode == "adaptive":
            probs = np.stack([_softmax(np.asarray(opt._blend_logits[i])) for i in idxs])
            mean = (probs * sizes[:, None]).sum(0) / sizes.sum()
            for tier, w in zip(TIERS, mean):
                row[f"weight_{tier}"] = float(w)
        if opt.stats_every:
            s = np.stack([np.asarray(opt._stats[i], np.float64) for i in idxs])
            grad_sq = s[:, col["grad_sq"]].sum()
            row["grad_norm"] = math.sqrt(grad_sq)
            if opt.memory_on:
                for tier in TIERS:
                    denom = math.sqrt(grad_sq * s[:, col[f"mem_sq_{tier}"]].sum())
                    row[f"cos_{tier}"] = float(s[:, col[f"dot_{tier}"]].sum() / denom) \
                        if denom > 0 else 0.0
                    row[f"weight_{tier}"] = float(
                        (s[:, col[f"weight_{tier}"]] * sizes).sum() / sizes.sum())
            row["update_norm"] = math.sqrt(s[:, col["update_sq"]].sum())
            row["param_norm"] = math.sqrt(s[:, col["param_sq"]].sum())
            row["update_ratio"] = row["update_norm"] / row["param_norm"] \
                if row["param_norm"] > 0 else 0.0
            row["stats_step"] = int(s[:, col["step"]].max())
        out[layer] = row
    return out


def _softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def format_table(stats: dict) -> str:
    """A fixed-width table of the non-empty fields, one row per layer."""
    if not stats:
        return "(no layers)"
    fields = [f for f in FIELDS if any(row.get(f) is not None for row in stats.values())]
    header = ["layer"] + fields
    rows = [[layer] + [_fmt(row.get(f)) for f in fields] for layer, row in stats.items()]
    widths = [max(len(str(r[j])) for r in [header] + rows) for j in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

"""AlgoPerf-style scoring of an optimizer comparison: targets, times to target, profiles.

Following the AlgoPerf benchmark (Dahl et al., "Benchmarking Neural Network
Training Algorithms", 2023), per workload ``w`` and optimizer ``o``:

target
    set from the best *baseline* (every optimizer but the one under study):
    each run's best validation metric; per baseline, the value that at least
    half of its seeds attain (the median of 3 seeds, the better of 2); the
    best such value over the baselines.  So the best baseline reaches the
    target on at least half its seeds, and the target is a level that a tuned
    standard optimizer attains within the workload's budget.
time to target ``t_{o,w}``
    per run, the first evaluation (end of an epoch) whose validation metric
    reaches the target, in optimizer steps (and in seconds of wall time,
    pro rata); per optimizer, the time by which at least half of its seeds
    reached it (the median of 3 seeds, the faster of 2), infinite when fewer
    than half reach it (AlgoPerf's median over studies).
ratio ``r_{o,w} = t_{o,w} / min_o' t_{o',w}``
    1 for the fastest optimizer, infinite for one that misses the target.
performance profile ``rho_o(tau)``
    the fraction of workloads with ``r_{o,w} <= tau``.
score
    ``1 / (tau_max - 1) * integral_1^tau_max rho_o(tau) d tau`` with
    ``tau_max = 4``: 1 for an optimizer that is fastest everywhere, 0 for one
    that is never within 4x of the fastest.

NOTE: AlgoPerf's primary clock is wall time on fixed hardware.  Here steps are
primary: the study runs on a shared 2-core CPU, where seconds depend on what
else runs; seconds are reported beside them.  The profile integral is exact
(``rho`` is a step function), not sampled.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

TAU_MAX = 4.0


def better(direction: str):
    """``a`` at least as good as ``b``: ``>=`` for ``"max"`` metrics, ``<=`` for ``"min"``."""
    if direction not in ("max", "min"):
        raise ValueError(f"direction={direction!r} must be one of ['max', 'min']")
    return (lambda a, b: a >= b) if direction == "max" else (lambda a, b: a <= b)


def best_value(curve: Sequence[float], direction: str) -> float:
    """The best finite value of a validation curve (NaN when none)."""
    finite = [v for v in curve if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan")
    return max(finite) if direction == "max" else min(finite)


def first_reach(curve: Sequence[float], eval_steps: Sequence[float], target: float,
                direction: str) -> float:
    """The step (or time) of the first evaluation at least as good as ``target``; ``inf``
    when none is."""
    ok = better(direction)
    for value, step in zip(curve, eval_steps):
        if value is not None and math.isfinite(value) and ok(value, target):
            return float(step)
    return math.inf


def _half(n: int) -> int:
    """The index of the ``ceil(n / 2)``-th item: reached by at least half of ``n`` seeds."""
    return (n + 1) // 2 - 1


def median_time(times: Iterable[float]) -> float:
    """The time by which at least half of the seeds reached the target (misses as ``inf``):
    the median of an odd number of seeds, the lower middle of an even number."""
    times = sorted(times)
    return times[_half(len(times))] if times else math.inf


def target(best_per_seed: dict, baselines: Iterable[str], direction: str) -> float:
    """``{optimizer: [best validation value per seed]}`` -> the workload's target: the best
    over ``baselines`` of the value at least half of the seeds attain (NaN when none has)."""
    medians = []
    for name in baselines:
        values = best_per_seed.get(name, [])
        finite = sorted((v for v in values if math.isfinite(v)), reverse=direction == "max")
        if values and len(finite) > _half(len(values)):  # at least half have a value
            medians.append(float(finite[_half(len(values))]))
    if not medians:
        return float("nan")
    return max(medians) if direction == "max" else min(medians)


def ratios(times: dict) -> dict:
    """``{optimizer: t}`` -> ``{optimizer: t / min t}`` (``inf`` for a miss, or everywhere
    when nobody reached the target)."""
    finite = [t for t in times.values() if math.isfinite(t) and t > 0]
    best = min(finite) if finite else None
    return {name: (t / best if best and math.isfinite(t) else math.inf)
            for name, t in times.items()}


def profile(ratios_by_workload: dict, optimizer: str, taus: Sequence[float]) -> np.ndarray:
    """``rho_o(tau)`` at each ``tau``: the fraction of workloads with ratio ``<= tau``."""
    r = np.array([w.get(optimizer, math.inf) for w in ratios_by_workload.values()], dtype=float)
    if r.size == 0:
        return np.zeros(len(taus))
    return np.array([(r <= tau).mean() for tau in taus])


def score(ratios_by_workload: dict, optimizer: str, tau_max: float = TAU_MAX) -> float:
    """``1 / (tau_max - 1) * integral_1^tau_max rho_o``, exactly: each workload with ratio
    ``r <= tau_max`` contributes ``(tau_max - max(r, 1)) / (tau_max - 1)``, averaged."""
    r = [w.get(optimizer, math.inf) for w in ratios_by_workload.values()]
    if not r:
        return 0.0
    return float(np.mean([(tau_max - max(x, 1.0)) / (tau_max - 1.0) if x <= tau_max else 0.0
                          for x in r]))

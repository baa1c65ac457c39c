"""Paired statistics: every optimizer against a reference (Adam), per workload, on the same seeds.

Per workload ``w``, optimizer ``o`` and reference ``a`` (``reference``), with ``v_{o,s}`` the
final metric of ``o``'s run with seed ``s`` (the argument ``values[w][o][s]``):

paired seeds ``S``
    the seeds where both ``o`` and ``a`` have a finite value.  The same seed means the same
    initialisation and the same data order, so the difference removes the seed's share of the
    spread.  A failed run (``None`` or NaN) counts as absent; seeds with a finite value for
    one arm only are left out and listed (``only_optimizer``, ``only_reference``), and
    ``n = |S|`` is reported.
paired difference ``d_s = v_{o,s} - v_{a,s}``, its mean ``mean_diff = 1/n sum_{s in S} d_s``.
95% percentile bootstrap interval ``[low, high]``
    ``B = n_resamples`` (10000) resamples of ``S``: resample ``b`` draws ``n`` indices
    uniformly with replacement, ``I_b = rng.integers(0, n, size=n)`` (all ``B`` rows drawn
    at once as one ``(B, n)`` array from ``np.random.default_rng(seed)``, ``seed = 0``), and
    takes ``m_b = mean(d[I_b])``; ``low`` and ``high`` are the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of ``m_1..m_B`` (``np.quantile``, its default linear
    interpolation).  The fixed RNG makes every report reproducible.  With ``n < 2`` there is
    no interval (``low = high = NaN``) and the verdict says so.
verdict, from the interval and the metric's ``direction`` (never from the means alone)
    ``"max"`` (higher is better, accuracy): ``"ahead"`` when ``low > 0``, ``"behind"`` when
    ``high < 0``; ``"min"`` (lower is better, bits per byte, loss): ``"ahead"`` when
    ``high < 0``, ``"behind"`` when ``low > 0``; otherwise (the interval holds 0)
    ``"level"``; ``"no interval"`` when ``n < 2``.

NOTE: with few seeds (5) the percentile bootstrap is narrow (it ignores the uncertainty in the
spread itself; Efron & Tibshirani 1993, ch. 13); the verdict is a description of the seeds
run, not a significance test.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from nested_research.core.checks import check_choice, check_int, check_real, check_str

N_RESAMPLES = 10_000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
VERDICTS = ("ahead", "level", "behind", "no interval")


@dataclass(frozen=True)
class Paired:
    """One optimizer against the reference on one workload (see the module docstring)."""

    workload: str
    optimizer: str
    reference: str
    direction: str
    n: int
    seeds: tuple
    mean_diff: float
    low: float
    high: float
    verdict: str
    only_optimizer: tuple = ()
    only_reference: tuple = ()

    def note(self) -> str:
        """A line on what was paired: ``n``, the seeds left out, and a missing interval."""
        parts = [f"n={self.n} paired seeds"]
        if self.only_optimizer:
            parts.append(f"seeds {list(self.only_optimizer)} only for {self.optimizer}")
        if self.only_reference:
            parts.append(f"seeds {list(self.only_reference)} only for {self.reference}")
        if self.n < 2:
            parts.append("fewer than 2 paired seeds: no interval")
        return "; ".join(parts)

    def text(self, digits: int = 3) -> str:
        """One line for a report: ``+0.022 [-0.004, +0.048] level (n=5)``."""
        if self.n == 0:
            return "no paired seeds"
        if self.n < 2:
            return f"{self.mean_diff:+.{digits}f} no interval (n=1)"
        return (f"{self.mean_diff:+.{digits}f} [{self.low:+.{digits}f}, "
                f"{self.high:+.{digits}f}] {self.verdict} (n={self.n})")

    def row(self) -> dict:
        """A flat dict for a CSV row (seed lists as text, the note added)."""
        out = asdict(self)
        for key in ("seeds", "only_optimizer", "only_reference"):
            out[key] = " ".join(str(s) for s in out[key])
        out["note"] = self.note()
        return out


def bootstrap_interval(diffs: Sequence[float], n_resamples: int = N_RESAMPLES,
                       confidence: float = CONFIDENCE,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``diffs`` (``d`` in the module
    docstring): quantiles ``(1 -+ confidence) / 2`` of ``n_resamples`` resampled means."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or d.size < 2 or not np.all(np.isfinite(d)):
        raise ValueError(f"diffs={list(np.ravel(d))!r} must be at least 2 finite numbers")
    n_resamples = check_int("n_resamples", n_resamples, low=1)
    confidence = check_real("confidence", confidence, low=0.0, high=1.0, low_open=True,
                            high_open=True)
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    means = d[rng.integers(0, d.size, size=(n_resamples, d.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def verdict(low: float, high: float, direction: str) -> str:
    """``"ahead"``, ``"level"`` or ``"behind"`` from the interval of ``optimizer - reference``
    and the metric's ``direction`` (``"max"`` or ``"min"``); ``"no interval"`` for NaN."""
    check_choice("direction", direction, ("max", "min"))
    if math.isnan(low) or math.isnan(high):
        return "no interval"
    if low > high:
        raise ValueError(f"interval=({low!r}, {high!r}) must have low <= high")
    if low > 0:
        return "ahead" if direction == "max" else "behind"
    if high < 0:
        return "behind" if direction == "max" else "ahead"
    return "level"


def _finite_seeds(arm: Mapping, key: str) -> dict:
    """``{seed: value}`` with the finite values only (``None`` and NaN are missing runs)."""
    out = {}
    for seed, value in arm.items():
        check_int(f"{key} seed", seed)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{key}[{seed}]={value!r} must be a number (or None)")
        if math.isfinite(value):
            out[int(seed)] = float(value)
    return out


def paired(values: Mapping, reference_values: Mapping, direction: str, *,
           workload: str = "", optimizer: str = "", reference: str = "adam",
           n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
           seed: int = BOOTSTRAP_SEED) -> Paired:
    """One optimizer's ``{seed: value}`` against the reference's ``{seed: value}``: paired on
    the seeds where both are finite, mean difference, bootstrap interval and verdict."""
    check_choice("direction", direction, ("max", "min"))
    mine = _finite_seeds(values, f"{workload}.{optimizer}")
    ref = _finite_seeds(reference_values, f"{workload}.{reference}")
    common = tuple(sorted(set(mine) & set(ref)))
    d = np.array([mine[s] - ref[s] for s in common], dtype=np.float64)
    mean_diff = float(d.mean()) if d.size else math.nan
    low, high = (bootstrap_interval(d, n_resamples, confidence, seed) if d.size >= 2
                 else (math.nan, math.nan))
    return Paired(workload=workload, optimizer=optimizer, reference=reference,
                  direction=direction, n=len(common), seeds=common, mean_diff=mean_diff,
                  low=low, high=high, verdict=verdict(low, high, direction),
                  only_optimizer=tuple(sorted(set(mine) - set(common))),
                  only_reference=tuple(sorted(set(ref) - set(common))))


def against_reference(values: Mapping[str, Mapping[str, Mapping[int, float]]],
                      directions: Mapping[str, str], reference: str = "adam",
                      n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                      seed: int = BOOTSTRAP_SEED) -> list[Paired]:
    """Every optimizer against ``reference`` on every workload.

    ``values[workload][optimizer][seed]`` is a run's final metric; ``directions[workload]``
    is ``"max"`` or ``"min"``.  A workload without the reference is an error (nothing to pair
    with); the reference itself is not compared with itself."""
    check_str("reference", reference)
    out = []
    for workload in sorted(values):
        arms = values[workload]
        if workload not in directions:
            raise ValueError(f"directions[{workload!r}] is missing: must be 'max' or 'min'")
        direction = check_choice(f"directions[{workload!r}]", directions[workload],
                                 ("max", "min"))
        if reference not in arms:
            raise ValueError(f"reference={reference!r} must be an optimizer of workload "
                             f"{workload!r} (has {sorted(arms)})")
        for optimizer in sorted(arms):
            if optimizer != reference:
                out.append(paired(arms[optimizer], arms[reference], direction,
                                  workload=workload, optimizer=optimizer, reference=reference,
                                  n_resamples=n_resamples, confidence=confidence, seed=seed))
    return out


def values_from_rows(rows: Sequence[Mapping], metric: str) -> dict:
    """``values[workload][optimizer][seed]`` from flat rows with keys ``workload``,
    ``optimizer``, ``seed`` and ``metric``; a repeated (workload, optimizer, seed) is an
    error."""
    out: dict = {}
    for i, row in enumerate(rows):
        for key in ("workload", "optimizer", "seed", metric):
            if key not in row:
                raise ValueError(f"rows[{i}] lacks {key!r}: must have workload, optimizer, "
                                 f"seed and {metric!r}")
        arm = out.setdefault(row["workload"], {}).setdefault(row["optimizer"], {})
        seed = check_int(f"rows[{i}].seed", row["seed"])
        if seed in arm:
            raise ValueError(f"rows[{i}].seed={seed!r} must appear once per workload and "
                             f"optimizer ({row['workload']}, {row['optimizer']})")
        value = row[metric]
        arm[seed] = math.nan if value is None else float(value)
    return out

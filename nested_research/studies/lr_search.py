"""The learning-rate search of the studies: the same for every optimizer, self-extending.

Start from an optimizer's default rate ``lr0`` (its ``conf/optimizer`` file)
on the grid ``lr0 * {1/3, 1, 3}``.  While the best rate sits at an edge of
what was tried, try one more rate a factor ``STEP = 3`` beyond that edge, at
most ``MAX_EXTENSIONS`` times in all (so a search costs 3 to 3 + 3 trials).
A rate that still ends at an edge is reported (``at_edge``): the search ran
out of budget, not of rates.

"Best" is the trial's score (the study's validation metric, ``direction``
``max`` or ``min``); a failed or non-finite trial is worse than any finite one.
Ties go to the smaller rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

GRID = (1 / 3, 1.0, 3.0)
STEP = 3.0
MAX_EXTENSIONS = 3


@dataclass
class SearchResult:
    best_lr: float
    trials: dict = field(default_factory=dict)     # rate -> score (NaN when failed)
    at_edge: bool = False

    @property
    def rates(self) -> list[float]:
        return sorted(self.trials)


def _key(direction: str):
    sign = 1.0 if direction == "max" else -1.0

    def key(item):
        lr, value = item
        good = value is not None and math.isfinite(value)
        return (good, sign * value if good else 0.0, -lr)
    return key


def search(trial: Callable[[float], float | None], lr0: float, direction: str = "max",
           grid=GRID, step: float = STEP, max_extensions: int = MAX_EXTENSIONS) -> SearchResult:
    """Run ``trial(lr) -> score`` on the grid around ``lr0`` and extend it past an edge
    while the best rate sits there (module docstring)."""
    if direction not in ("max", "min"):
        raise ValueError(f"direction={direction!r} must be one of ['max', 'min']")
    trials = {}
    for factor in grid:
        lr = float(f"{lr0 * factor:.6g}")
        trials[lr] = trial(lr)
    best = max(trials.items(), key=_key(direction))[0]
    extensions = 0
    while extensions < max_extensions:
        rates = sorted(trials)
        if best == rates[0]:
            lr = float(f"{rates[0] / step:.6g}")
        elif best == rates[-1]:
            lr = float(f"{rates[-1] * step:.6g}")
        else:
            break
        trials[lr] = trial(lr)
        extensions += 1
        best = max(trials.items(), key=_key(direction))[0]
    rates = sorted(trials)
    return SearchResult(best, trials, at_edge=best in (rates[0], rates[-1]))

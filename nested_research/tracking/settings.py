"""The trackers' settings (the ``logger`` config group), declared once as typed groups.

Checked as every parameter of the project is (``core.hparams``): a bad value stops the job with
one line naming ``logger.<key>``, the value and what is allowed, before anything is written
(the job's preflight builds the tracker, which checks its settings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from nested_research.core.checks import check_str
from nested_research.core.hparams import HParams, boolean, choice, integer, param, real
from nested_research.tracking.schedule_report import HEATMAP_CAP

MODES = ("offline", "online", "disabled")


def _text(optional: bool):
    def check(name, value):
        if value is None and optional:
            return None
        return check_str(name, value, "a non-empty string" + (" or null" if optional else ""))
    return check


def _tags(name, value):
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{name}={value!r} must be a list of strings")
    return tuple(str(t) for t in value)


@dataclasses.dataclass(frozen=True)
class NullSettings(HParams):
    """``logger=none``: no tracker; ``stats_every`` still sets the optimizer's in-step
    statistics period (the end-of-run table shows them)."""

    PREFIX = "logger."

    stats_every: int = param(0, integer(0))


@dataclasses.dataclass(frozen=True)
class WandbSettings(HParams):
    """``logger=wandb``; ``conf/logger/wandb.yaml`` says what each setting does."""

    PREFIX = "logger."

    mode: str = param("offline", choice(MODES))
    project: str = param("nested-research", _text(False))
    entity: str = param(None, _text(True))
    group: str = param(None, _text(True))
    tags: tuple = param((), _tags)
    name: str = param(None, _text(True))
    dir: str = param(None, _text(True))
    stats_every: int = param(100, integer(0))
    timing_every: int = param(200, integer(0))
    log_every: int = param(10, integer(0))
    log_model: bool = param(False, boolean())
    sweep_id: str = param(None, _text(True))
    init_timeout: float = param(30.0, real(0.0))
    finish_timeout: float = param(120.0, real(0.0))
    heatmap_cap: int = param(HEATMAP_CAP, integer(0))
    async_log: bool = param(True, boolean())

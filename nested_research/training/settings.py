"""The trainer's settings (the ``trainer`` config group), declared once as a typed group.

Checked as every parameter of the project is (``core.hparams``): each field carries its check,
and a bad value or an unknown key stops the job with one line naming ``trainer.<key>``, the
value and what is allowed, before anything is written (``preflight.py``).
"""

from __future__ import annotations

import dataclasses

from nested_research.core.checks import check_str
from nested_research.core.hparams import HParams, boolean, choice, integer, param

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = (None, "mirrored", "multi_worker")


def _run_dir(name, value):
    if value is None:
        return None
    return check_str(name, value.strip() if isinstance(value, str) else value,
                     "the path of a run directory (the run to continue) or null")


def _metric(name, value):
    return check_str(name, value, "the name of a logged metric, e.g. val/accuracy")


@dataclasses.dataclass(frozen=True)
class TrainerParams(HParams):
    """``conf/trainer/default.yaml`` says what each setting does."""

    PREFIX = "trainer."

    epochs: int = param(10, integer(1))
    batch_size: int = param(32, integer(1))
    seed: int = param(0, integer(0))
    jit_compile: bool = param(False, boolean())
    run_eagerly: bool = param(False, boolean())
    precision: str = param("float32", choice(PRECISIONS))
    max_steps: int = param(None, integer(1, optional=True))
    deterministic: bool = param(False, boolean())
    strategy: str = param(None, choice(STRATEGIES))
    monitor: str = param("val/accuracy", _metric)
    monitor_mode: str = param("max", choice(("min", "max")))
    verbose: int = param(1, integer(0))
    max_nonfinite_steps: int = param(20, integer(1))
    checkpoint_every: int = param(200, integer(0, optional=True))
    keep_checkpoints: int = param(2, integer(1, optional=True))
    resume: str = param(None, _run_dir)

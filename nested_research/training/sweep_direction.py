"""A Hydra callback: an Optuna study's ``direction`` agrees with ``trainer.monitor_mode``.

The app returns ``trainer.monitor`` to the sweeper.  hydra-optuna-sweeper minimizes unless
``hydra.sweeper.direction`` says otherwise, so with ``trainer.monitor_mode=max`` (the default:
``val/accuracy``) a forgotten ``hydra.sweeper.direction=maximize`` would make the study pick
the worst run.  :class:`SweepDirection` (``hydra.callbacks`` in ``conf/config.yaml``) stops such
a multirun before its first job: one line, exit code 2, nothing written.  Sweepers without a
``direction`` (Hydra's basic grid sweeper) pass.
"""

from __future__ import annotations

import os
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nested_research.core.errors import ConfigError

#: The study direction each ``trainer.monitor_mode`` needs.
DIRECTIONS = {"min": "minimize", "max": "maximize"}


def check_sweep_direction(config: DictConfig) -> None:
    """``ConfigError`` when ``hydra.sweeper.direction`` disagrees with ``trainer.monitor_mode``."""
    direction = config.hydra.sweeper.get("direction")
    mode = config.trainer.get("monitor_mode")
    want = DIRECTIONS.get(mode)
    if direction is None or want is None:  # no direction; a bad monitor_mode is preflight's
        return
    got = getattr(direction, "name", direction)  # Optuna's Direction enum, or a plain string
    if got != want:
        raise ConfigError(
            f"hydra.sweeper.direction={got!r} must be {want!r}: the app returns "
            f"trainer.monitor={config.trainer.get('monitor')!r} with trainer.monitor_mode={mode!r}"
            f" (or set 'hydra.sweeper.direction=${{trainer.monitor_mode}}imize')")


class SweepDirection(Callback):
    """Runs :func:`check_sweep_direction` when a multirun starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_sweep_direction(config)
        except ConfigError as err:
            if os.environ.get("NESTED_RESEARCH_FULL_ERROR"):
                raise
            print(f"nested_research.train: error: {err}", file=sys.stderr)
            sys.exit(2)

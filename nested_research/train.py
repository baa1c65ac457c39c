"""Entry point: ``python -m nested_research.train [group=option ...] [key=value ...]``.

Composes the Hydra config in ``conf/`` and runs one job (``job.run``): builds
the data, the model, the optimizer and the tracker, trains, evaluates, and
writes ``results.json`` into the run directory.  Returns the monitored metric
(``trainer.monitor``) for Hydra sweepers.

Bad input (an unknown option, a value of the wrong type, an invalid optimizer
setting, an output directory that cannot be written, a missing or corrupt TFDS
data directory) stops the run before any data is built with a one-paragraph
message and exit code 2; ``NESTED_RESEARCH_FULL_ERROR=1`` shows the traceback.
From the command line these are checked by the :class:`Preflight` callback
before Hydra creates the run directory, so nothing is written; the job then
runs without checking again (``preflight.py``: once per job).  An override of
``memory``, ``blend_mode`` or ``schedule_curve`` for an optimizer that has none of
them (a baseline: they come with ``optimizer=nested``) stops the same way before
Hydra composes (``config_groups.check_group_overrides``).  What only the built
objects can check (a model argument that depends on the data, such as a chunk
size against the sequence length; a range only a Keras optimizer's constructor
checks) stops the same way when the job builds them, after the data is loaded
and before any training, with nothing but the run directory written.

A loss that stays NaN/inf for ``trainer.max_nonfinite_steps`` consecutive
steps (``guard.py``) stops the run: one-line message, exit code 1, the W&B run
finished as failed.

No module of the package imports this one; the names below that tests and
scripts take from here are those of ``job.py``, ``preflight.py``,
``builders.py`` and ``errors.py``.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nested_research.core.configs import conf_dir
from nested_research.core.errors import ConfigError
from nested_research.training import preflight
from nested_research.training.builders import build_learning_rate, build_optimizer
from nested_research.training.config_groups import check_group_overrides, register_resolvers
from nested_research.training.job import run
from nested_research.training.preflight import (Preflighted, check_output_dirs, check_trainer,
                                                validate)

__all__ = ["ConfigError", "Preflight", "build_learning_rate", "build_optimizer", "check_trainer",
           "main", "run", "validate"]

#: What the :class:`Preflight` callback found, by absolute run directory, until ``main`` takes
#: it (``pop``): Hydra calls the callback and then ``main`` in this process, for the same
#: config and run directory, so ``main`` hands the record to ``run`` (``checked``) and the
#: job is checked once.  Only this module reads or writes it.
_PREFLIGHTED: dict[str, Preflighted] = {}

register_resolvers()  # conf/config.yaml's hydra.run.dir uses ${nr.join:...}


class Preflight(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): checks before Hydra writes.

    Hydra creates the run directory (and its ``.hydra/``) before ``main`` runs;
    this runs :func:`preflight.preflight` first, so a bad value, an unwritable
    output directory or a missing/corrupt data directory stops with one
    message, exit code 2 and nothing on disk.  A multirun checks its sweep
    directory here and each job in ``run``.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = config.hydra.run.dir
        _PREFLIGHTED[os.path.abspath(run_dir)] = _exit_on_error(
            lambda: preflight.preflight(config, run_dir))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _exit_on_error(lambda: check_output_dirs(config, config.hydra.sweep.dir,
                                                 "hydra.sweep.dir"))


def _exit_on_error(check):
    """``check()``; a ``ConfigError`` prints one line and exits with status 2."""
    try:
        return check()
    except ConfigError as err:
        if os.environ.get("NESTED_RESEARCH_FULL_ERROR"):
            raise
        print(f"nested_research.train: error: {err}", file=sys.stderr)
        sys.exit(2)


def main():
    """The command: ``check_group_overrides`` on the command line (one line and exit code 2 for
    ``memory=...`` with an optimizer that has no memory group), then the Hydra app."""
    _exit_on_error(lambda: check_group_overrides(sys.argv[1:]))
    return _main()


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def _main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from nested_research.training.guard import NonFiniteLossError

    print(OmegaConf.to_yaml(cfg, resolve=True))
    output_dir = HydraConfig.get().runtime.output_dir
    checked = _PREFLIGHTED.pop(os.path.abspath(output_dir), None)  # None: a multirun job
    try:
        return _exit_on_error(lambda: run(cfg, output_dir, checked=checked))
    except NonFiniteLossError as err:  # the run failed (W&B run marked failed): exit code 1
        if os.environ.get("NESTED_RESEARCH_FULL_ERROR"):
            raise
        print(f"nested_research.train: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

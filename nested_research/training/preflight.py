"""Preflight: everything a job checks before it writes anything, run once per job.

:func:`preflight` validates the config (``trainer`` types and ranges, the
optimizer's keywords through their declaration, without building it: the job
builds it once, ``builders.check_optimizer``; the tracker built on trial and
checked to be a ``tracking.Tracker``), finds the checkpoint
``trainer.resume`` continues from, and checks that the output directories
can be written and that the data directory holds usable data, reading only.
It returns a :class:`Preflighted` record; ``job.run`` takes one (``checked``)
from a caller that already ran it (the command line's Hydra callback,
``train.Preflight``) and runs :func:`preflight` itself otherwise.

Every failure is one ``ConfigError`` naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nested_research.core.errors import ConfigError
from nested_research.tracking.trackers import Tracker
from nested_research.training.builders import check_optimizer
from nested_research.training.settings import TrainerParams

if TYPE_CHECKING:
    from nested_research.training.checkpoint_files import Checkpoint

@dataclass(frozen=True)
class Preflighted:
    """A job that passed :func:`preflight`.

    ``output_dir``: where it writes (absolute; ``trainer.resume``'s directory
    when resuming); ``checkpoint``: the checkpoint it continues from (``None``:
    a fresh run).
    """

    output_dir: str
    checkpoint: Checkpoint | None = None


def check_trainer(trainer) -> TrainerParams:
    """The ``trainer`` group as typed settings; ``ConfigError`` names the key."""
    try:
        return TrainerParams.from_mapping(OmegaConf.to_container(trainer, resolve=True)
                                          if isinstance(trainer, DictConfig) else trainer)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _short(err: Exception) -> str:
    """The innermost message of an (instantiate-wrapped) exception."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err)


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before data is built; raises ``ConfigError``."""
    check_trainer(cfg.trainer)
    try:
        # The run's length is known once data is built; max_steps bounds it if set.
        check_optimizer(cfg, total_steps=cfg.trainer.max_steps or 10**9,
                        stats_every=cfg.logger.get("stats_every", 0))
        tracker = instantiate(cfg.logger)
    except ConfigError:
        raise
    except Exception as err:  # instantiate wraps the constructor's ValueError/TypeError
        raise ConfigError(_short(err)) from err
    if not isinstance(tracker, Tracker):
        raise ConfigError(f"logger._target_={cfg.logger.get('_target_')!r} is not a tracker: "
                          f"{type(tracker).__name__} does not implement every call of "
                          f"nested_research.tracking.Tracker (NullTracker and WandbTracker do)")


# ---------------------------------------------------------------- paths (checked, not created)
def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def check_output_dir(path: str, param: str, cfg: DictConfig) -> None:
    """``path`` is, or can be created as, a writable directory; creates nothing."""
    found = _nearest_existing(str(path))
    if not os.path.isdir(found):
        where = "is" if found == os.path.abspath(path) else f"lies under {found!r}, which is"
        problem = f"{where} a file, not a directory"
    elif not os.access(found, os.W_OK | os.X_OK):
        problem = f"cannot be written: {found!r} is not writable"
    else:
        return
    raise ConfigError(f"{param}={str(path)!r} {problem}; the run writes its results there. "
                      f"Choose a writable directory with paths.output_dir=<dir> or "
                      f"NESTED_RESEARCH_OUTPUT_DIR=<dir> (paths.output_dir is "
                      f"{cfg.paths.output_dir!r})")


def check_output_dirs(cfg: DictConfig, output_dir: str, param: str = "hydra.run.dir") -> None:
    """The run directory and, for W&B, the directory its ``wandb/`` folder goes to."""
    check_output_dir(output_dir, param, cfg)
    if str(cfg.logger.get("_target_", "")).endswith("WandbTracker"):
        if os.environ.get("WANDB_DIR"):
            check_output_dir(os.environ["WANDB_DIR"], "WANDB_DIR", cfg)
        elif cfg.logger.get("dir"):
            check_output_dir(cfg.logger.dir, "logger.dir", cfg)


def data_error(cfg: DictConfig, err: Exception) -> ConfigError:
    """A data failure as one message; a missing, corrupt or unusable data directory names
    ``data.data_dir``."""
    from nested_research.data import DataDirError

    inner = err
    while inner is not None and not isinstance(inner, DataDirError):
        inner = inner.__cause__
    if inner is not None:
        return ConfigError(f"data.data_dir={cfg.data.get('data_dir')!r} "
                           f"(data={cfg.data.name}): {inner}")
    return ConfigError(f"data ({cfg.data.name}): {_short(err)}")


def model_error(cfg: DictConfig, err: Exception) -> ConfigError | None:
    """A model builder's refusal as one line naming ``model.<key>``: the builders raise
    ``ValueError`` worded ``<param>=<value!r> must be ...``.  ``None`` for any other failure
    (a bug, not a setting: it keeps its traceback).  Checked when the job builds the model,
    after the data (the data gives the input shape, e.g. the sequence length) and before
    training."""
    inner = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
    if not isinstance(inner, (ValueError, TypeError)):
        return None
    message = str(inner)
    if re.match(r"[A-Za-z_]\w*=", message):
        return ConfigError(f"model.{message} (model: {cfg.model.get('_target_')})")
    return ConfigError(f"model ({cfg.model.get('_target_')}): {message}")


def optimizer_error(cfg: DictConfig, err: Exception) -> ConfigError:
    """A failure of the optimizer's constructor as one message: what only the constructor
    checks (the values of a Keras optimizer's own parameters, ``builders.check_optimizer``)."""
    return ConfigError(f"optimizer={cfg.optimizer.name} ({cfg.optimizer.params._target_}): "
                       f"{_short(err)}")


def check_data(cfg: DictConfig) -> None:
    """The data directory, reading only (missing or corrupt dataset, unusable path)."""
    if cfg.data.get("_target_") != "nested_research.data.load_splits":
        return
    from nested_research.data import check_data_dir

    kwargs = cfg.data.get("builder_kwargs")
    try:
        check_data_dir(cfg.data.name, cfg.data.data_dir,
                       OmegaConf.to_container(kwargs, resolve=True) if kwargs else None)
    except Exception as err:  # noqa: BLE001 - reported as one message
        raise data_error(cfg, err) from err


def job_output_dir(cfg: DictConfig, output_dir: str) -> str:
    """Where the job writes: ``output_dir``, or the run ``trainer.resume`` continues."""
    if cfg.trainer.get("resume"):
        return os.path.abspath(os.path.expanduser(str(cfg.trainer.resume)))
    return output_dir


def preflight(cfg: DictConfig, output_dir: str) -> Preflighted:
    """Everything checked before anything is written: the config, the checkpoint
    ``trainer.resume`` continues from, the output directories (``output_dir``, Hydra's run
    directory from the command line, and the resumed run's), the data directory."""
    validate(cfg)
    ckpt = resume_checkpoint(cfg)
    check_output_dirs(cfg, output_dir)
    job_dir = job_output_dir(cfg, output_dir)
    if job_dir != output_dir:
        check_output_dir(job_dir, "trainer.resume", cfg)
    check_data(cfg)
    return Preflighted(output_dir=os.path.abspath(job_dir), checkpoint=ckpt)


def resume_checkpoint(cfg: DictConfig) -> Checkpoint | None:
    """``trainer.resume``: its newest complete checkpoint, written with this config (reads only)."""
    if not cfg.trainer.get("resume"):
        return None
    from nested_research.training.resume import check_resume

    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # Preflight sees hydra
    return check_resume(cfg.trainer.resume, OmegaConf.to_container(job, resolve=True))

"""Entry point: ``python -m nested_research.train [group=option ...] [key=value ...]``.

Composes the Hydra config in ``conf/``, checks it, then builds (only here,
with ``instantiate``) the data, the model, the optimizer and the tracker,
trains, evaluates, and writes ``results.json`` into the run directory.
Returns the monitored metric (``trainer.monitor``) for Hydra sweepers.

Bad input (an unknown option, a value of the wrong type, an invalid optimizer
setting, an output directory that cannot be written, a missing or corrupt TFDS
data directory) stops the run before any data is built with a one-paragraph
message and exit code 2; ``NESTED_RESEARCH_FULL_ERROR=1`` shows the traceback.
From the command line these are checked by the :class:`Preflight` callback
before Hydra creates the run directory, so nothing is written.

A loss that stays NaN/inf for ``trainer.max_nonfinite_steps`` consecutive
steps (``guard.py``) stops the run: one-line message, exit code 1, the W&B run
finished as failed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import hydra
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


class ConfigError(ValueError):
    """A configuration value the run cannot use."""


def _expect_int(section: str, cfg, key: str, minimum: int, optional: bool = False):
    value = cfg.get(key)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{section}.{key}={value!r} must be an integer >= {minimum}"
                          + (" or null" if optional else ""))


def check_trainer(trainer) -> None:
    """Types and ranges of the ``trainer`` group."""
    _expect_int("trainer", trainer, "epochs", 1)
    _expect_int("trainer", trainer, "batch_size", 1)
    _expect_int("trainer", trainer, "seed", 0)
    _expect_int("trainer", trainer, "max_steps", 1, optional=True)
    _expect_int("trainer", trainer, "verbose", 0)
    _expect_int("trainer", trainer, "max_nonfinite_steps", 1)
    _expect_int("trainer", trainer, "checkpoint_every", 0, optional=True)
    _expect_int("trainer", trainer, "keep_checkpoints", 1, optional=True)
    resume = trainer.get("resume")
    if resume is not None and (not isinstance(resume, str) or not resume.strip()):
        raise ConfigError(f"trainer.resume={resume!r} must be the path of a run directory "
                          f"(the run to continue) or null")
    for key in ("jit_compile", "deterministic", "run_eagerly"):
        if not isinstance(trainer.get(key), bool):
            raise ConfigError(f"trainer.{key}={trainer.get(key)!r} must be true or false")
    if trainer.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={trainer.precision!r} is not one of {PRECISIONS}")
    if trainer.get("strategy") not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={trainer.get('strategy')!r} is not one of "
                          f"{STRATEGIES}")
    if trainer.monitor_mode not in ("min", "max"):
        raise ConfigError(f"trainer.monitor_mode={trainer.monitor_mode!r} is not 'min' or 'max'")


def build_learning_rate(cfg: DictConfig, steps_per_epoch: int, total_steps: int):
    """``optimizer.learning_rate`` wrapped by the ``lr_schedule`` group's schedule."""
    lr = cfg.optimizer.learning_rate
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"optimizer.learning_rate={lr!r} must be a number > 0")
    if cfg.lr_schedule.get("_target_") is None:
        return float(lr)
    target = cfg.lr_schedule._target_
    extra = {"steps_per_epoch": steps_per_epoch} if target.endswith("PerEpochSchedule") \
        else {"total_steps": total_steps}
    return instantiate(cfg.lr_schedule, initial_learning_rate=float(lr), **extra)


def build_optimizer(cfg: DictConfig, steps_per_epoch: int, total_steps: int, stats_every: int):
    """The optimizer: ``optimizer.params`` plus, for ours, the memory/blend/interval groups."""
    lr = build_learning_rate(cfg, steps_per_epoch, total_steps)
    extra = {}
    if cfg.optimizer.uses_memory_groups:
        for group in ("memory", "blend_mode", "schedule_curve"):
            extra.update(OmegaConf.to_container(cfg[group], resolve=True))
        extra["stats_every"] = stats_every
    return instantiate(cfg.optimizer.params, learning_rate=lr, **extra)


def _short(err: Exception) -> str:
    """The innermost message of an (instantiate-wrapped) exception."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err)


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked before data is built; raises ``ConfigError``."""
    check_trainer(cfg.trainer)
    try:
        # Steps per epoch are known only once data is built; max_steps bounds the run if set.
        build_optimizer(cfg, steps_per_epoch=1, total_steps=cfg.trainer.max_steps or 10**9,
                        stats_every=cfg.logger.get("stats_every", 0))
        instantiate(cfg.logger)
    except ConfigError:
        raise
    except Exception as err:  # instantiate wraps the constructor's ValueError/TypeError
        raise ConfigError(_short(err)) from err


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


def _data_error(cfg: DictConfig, err: Exception) -> ConfigError:
    """A data failure as one message; a missing/corrupt/unusable data_dir names ``data.data_dir``."""
    from nested_research.data import DataDirError

    inner = err
    while inner is not None and not isinstance(inner, DataDirError):
        inner = inner.__cause__
    if inner is not None:
        return ConfigError(f"data.data_dir={cfg.data.get('data_dir')!r} "
                           f"(data={cfg.data.name}): {inner}")
    return ConfigError(f"data ({cfg.data.name}): {_short(err)}")


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
        raise _data_error(cfg, err) from err


def preflight(cfg: DictConfig, output_dir: str):
    """Everything checked before anything is written: config, output and data directories,
    and the checkpoint ``trainer.resume`` continues from (returned; ``None`` if not resuming)."""
    validate(cfg)
    ckpt = resume_checkpoint(cfg)
    check_output_dirs(cfg, output_dir)
    check_data(cfg)
    return ckpt


def resume_checkpoint(cfg: DictConfig):
    """``trainer.resume``: its newest complete checkpoint, written with this config (reads only)."""
    if not cfg.trainer.get("resume"):
        return None
    from nested_research.checkpoint import check_resume

    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # Preflight sees hydra
    return check_resume(cfg.trainer.resume, OmegaConf.to_container(job, resolve=True))


def make_output_dir(output_dir: str) -> None:
    """Create ``output_dir`` and prove it takes a file (read-only file systems, ACLs)."""
    import tempfile

    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as err:
        raise ConfigError(f"hydra.run.dir={str(output_dir)!r} cannot be written "
                          f"({err.strerror or err}); choose a writable directory with "
                          f"paths.output_dir=<dir> or NESTED_RESEARCH_OUTPUT_DIR=<dir>") from err


class Preflight(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): checks before Hydra writes.

    Hydra creates the run directory (and its ``.hydra/``) before ``main`` runs;
    this runs :func:`preflight` first, so a bad value, an unwritable output
    directory or a missing/corrupt data directory stops with one message,
    exit code 2 and nothing on disk.  A multirun checks its sweep directory.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _exit_on_error(lambda: preflight(config, config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _exit_on_error(lambda: check_output_dirs(config, config.hydra.sweep.dir,
                                                 "hydra.sweep.dir"))


def _exit_on_error(check) -> None:
    try:
        check()
    except ConfigError as err:
        if os.environ.get("NESTED_RESEARCH_FULL_ERROR"):
            raise
        print(f"nested_research.train: error: {err}", file=sys.stderr)
        sys.exit(2)


STRATEGIES = (None, "mirrored", "multi_worker")


def make_strategy(name):
    """``None``: the default (one device); ``"mirrored"``: ``MirroredStrategy`` (local devices);
    ``"multi_worker"``: ``MultiWorkerMirroredStrategy``, cluster from ``TF_CONFIG`` (README)."""
    import tensorflow as tf

    if name is None:
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def model_inputs(data) -> dict:
    """What the model builders take from the data."""
    kw = {"input_shape": tuple(data.input_shape), "num_classes": data.num_classes}
    if data.task == "sequence":
        kw["vocab_size"] = int(data.metadata["vocab_size"])
        kw["output_positions"] = int(data.metadata["num_queries"])
    return kw


def _monitored(metrics: dict, key: str) -> float:
    if key not in metrics:
        raise ConfigError(f"trainer.monitor={key!r} is not a logged metric; "
                          f"available: {sorted(metrics)}")
    return float(metrics[key])


def run(cfg: DictConfig, output_dir: str) -> float:
    """Train once as ``cfg`` says; write ``results.json`` to ``output_dir``; return the monitor."""
    import keras
    import tensorflow as tf
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # TFDS reads are not news
    if cfg.trainer.get("resume"):  # the resumed run goes on writing into its own directory
        output_dir = os.path.abspath(os.path.expanduser(str(cfg.trainer.resume)))
    ckpt = preflight(cfg, output_dir)
    make_output_dir(output_dir)
    t = cfg.trainer
    keras.utils.set_random_seed(t.seed)
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(t.precision)
    tracker = instantiate(cfg.logger)
    failed, result, model = True, None, None
    try:
        try:
            data = instantiate(cfg.data, batch_size=t.batch_size, seed=t.seed, _convert_="all")
        except Exception as err:  # missing/corrupt data, bad data settings
            raise _data_error(cfg, err) from err
        strategy = make_strategy(t.strategy)
        with strategy.scope():
            model = instantiate(cfg.model, **model_inputs(data), _convert_="all")
            total = t.epochs * data.steps_per_epoch
            if t.max_steps is not None:
                total = min(total, t.max_steps)
            optimizer = build_optimizer(cfg, data.steps_per_epoch, total, tracker.stats_every)
            if getattr(optimizer, "auto_schedule", False):
                optimizer.compute_depths_from_model(model)
            config = OmegaConf.to_container(cfg, resolve=True)
            progress = os.path.join(output_dir, "progress.jsonl")
            resume = _prepare_resume(ckpt, model, tracker, progress)
            tracker.start(config, output_dir)
            from nested_research.trainer import fit

            checkpointer = None
            if t.get("checkpoint_every") is not None:
                from nested_research.checkpoint import Checkpointer

                info = getattr(tracker, "resume_info", lambda: None)()
                checkpointer = Checkpointer(
                    output_dir, t.checkpoint_every, data.steps_per_epoch,
                    keep=t.get("keep_checkpoints") or 2, meta={"config": config, "wandb": info},
                    before_save=getattr(tracker, "flush", None), resume=resume,
                    log_rows=getattr(tracker, "recent_rows", None),
                    defer_tail=8 if t.strategy else 0)
            result = fit(model, optimizer, data, epochs=t.epochs, max_steps=t.max_steps,
                         jit_compile=t.jit_compile, callbacks=tracker.callbacks(optimizer),
                         verbose=t.verbose, progress_path=progress,
                         run_eagerly=t.run_eagerly,
                         max_nonfinite_steps=t.max_nonfinite_steps,
                         checkpointer=checkpointer, resume=resume)
        model.save(os.path.join(output_dir, "model.keras"))
        value = _monitored(result.metrics, t.monitor)
        failed = not math.isfinite(value)
        results = {
            "metrics": result.metrics, "history": result.history, "steps": result.steps,
            "epochs": result.epochs, "wall_time": result.wall_time, "monitor": t.monitor,
            "skipped_steps": result.skipped_steps,
            "monitor_value": value, "config": config,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with open(os.path.join(output_dir, "results.json"), "w") as fh:
            json.dump(results, fh, indent=2, default=float)
        print(json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
        print(f"results: {os.path.join(output_dir, 'results.json')}")
        return value
    finally:
        tracker.finish(result.metrics if result else None, failed=failed,
                       optimizer=getattr(model, "optimizer", None))
        keras.mixed_precision.set_global_policy(previous_policy)


def _prepare_resume(ckpt, model, tracker, progress_path: str):
    """A ``checkpoint.Resume`` for ``ckpt`` (``None``: a fresh run); sets up the W&B run to
    continue and drops ``progress.jsonl`` rows of epochs after the checkpoint."""
    if ckpt is None:
        return None
    from nested_research.checkpoint import Resume, check_model, trim_progress

    check_model(ckpt, model)  # before anything is written
    info = ckpt.meta.get("wandb") or {}
    if info.get("id") and hasattr(tracker, "resume_id"):
        tracker.resume_id, tracker.start_step = info["id"], ckpt.step
        tracker.replay_rows = ckpt.rows()
        if info.get("dir") and not os.environ.get("WANDB_DIR"):
            tracker.dir = info["dir"]  # the run's W&B files stay together
    resume = Resume(ckpt)
    trim_progress(progress_path, max((len(v) for v in resume.history.values()), default=0))
    print(f"resuming {ckpt.run_dir} from {ckpt.path}: epoch {ckpt.epoch + 1}, batch "
          f"{ckpt.position} of the epoch, step {ckpt.step}")
    return resume


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from nested_research.guard import NonFiniteLossError

    print(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        return run(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as err:
        if os.environ.get("NESTED_RESEARCH_FULL_ERROR"):
            raise
        print(f"nested_research.train: error: {err}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as err:  # the run failed (W&B run marked failed): exit code 1
        if os.environ.get("NESTED_RESEARCH_FULL_ERROR"):
            raise
        print(f"nested_research.train: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

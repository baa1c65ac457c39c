"""Entry point: ``python -m nested_research.train [group=option ...] [key=value ...]``.

Composes the Hydra config in ``conf/``, checks it, then builds (only here,
with ``instantiate``) the data, the model, the optimizer and the tracker,
trains, evaluates, and writes ``results.json`` into the run directory.
Returns the monitored metric (``trainer.monitor``) for Hydra sweepers.

Bad input (an unknown option, a value of the wrong type, an invalid optimizer
setting) stops the run before any data is built with a one-paragraph message
and exit code 2; ``NESTED_RESEARCH_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import hydra
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
    validate(cfg)
    os.makedirs(output_dir, exist_ok=True)
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
            raise ConfigError(f"data ({cfg.data.name}): {_short(err)}") from err
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
            tracker.start(config, output_dir)
            from nested_research.trainer import fit

            result = fit(model, optimizer, data, epochs=t.epochs, max_steps=t.max_steps,
                         jit_compile=t.jit_compile, callbacks=tracker.callbacks(optimizer),
                         verbose=t.verbose,
                         progress_path=os.path.join(output_dir, "progress.jsonl"),
                         run_eagerly=t.run_eagerly)
        model.save(os.path.join(output_dir, "model.keras"))
        value = _monitored(result.metrics, t.monitor)
        failed = not math.isfinite(value)
        results = {
            "metrics": result.metrics, "history": result.history, "steps": result.steps,
            "epochs": result.epochs, "wall_time": result.wall_time, "monitor": t.monitor,
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
                       optimizer=model.optimizer if model is not None else None)
        keras.mixed_precision.set_global_policy(previous_policy)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    print(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        return run(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as err:
        if os.environ.get("NESTED_RESEARCH_FULL_ERROR"):
            raise
        print(f"nested_research.train: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

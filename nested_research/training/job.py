"""One training job: ``run(cfg, output_dir)`` trains once as the composed config says.

Builds (with ``instantiate``) the tracker, the data, the model and the
optimizer (once, now that the data fixes the run's length), trains
(``fit.fit``), evaluates, and writes ``results.json``, ``model.keras`` and
``progress.jsonl`` into ``output_dir``; returns the monitored metric
(``trainer.monitor``).  The config recorded in ``results.json`` and the W&B
run carries ``versions`` (``core.environment.versions``).  Nothing is written
before the job passed ``preflight.preflight`` (once: ``checked`` when the
caller ran it).  A resumed
run (``trainer.resume``) hands the checkpoint preflight found to ``fit``,
which restores and continues from it (``resume.py``).  The command line
(``train.py``) and the studies (``nested_research.studies``) call it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nested_research.core.environment import versions
from nested_research.core.errors import ConfigError
from nested_research.optimizers.protocols import DepthScheduled
from nested_research.tracking.trackers import Tracker
from nested_research.training import preflight
from nested_research.training.builders import (build_optimizer, make_strategy, model_inputs,
                                               run_length_params)
from nested_research.training.preflight import (Preflighted, data_error, job_output_dir,
                                                model_error, optimizer_error)


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


def _monitored(metrics: dict, key: str) -> float:
    if key not in metrics:
        raise ConfigError(f"trainer.monitor={key!r} is not a logged metric; "
                          f"available: {sorted(metrics)}")
    return float(metrics[key])


def run(cfg: DictConfig, output_dir: str, checked: Preflighted | None = None) -> float:
    """Train once as ``cfg`` says; write ``results.json`` to ``output_dir``; return the monitor.

    A resumed run (``trainer.resume``) writes into its own directory instead.  ``checked``:
    what ``preflight.preflight`` returned for this ``cfg`` and ``output_dir``, when the
    caller already ran it (the command line's Hydra callback); ``None``: it runs here.
    """
    import keras
    import tensorflow as tf
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # TFDS reads are not news
    output_dir = job_output_dir(cfg, output_dir)
    if checked is None:
        checked = preflight.preflight(cfg, output_dir)
    elif checked.output_dir != os.path.abspath(output_dir):
        raise ValueError(f"checked={checked!r} is the preflight of another job "
                         f"(this one writes to {output_dir!r})")
    make_output_dir(output_dir)
    t = cfg.trainer
    keras.utils.set_random_seed(t.seed)
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(t.precision)
    tracker: Tracker = instantiate(cfg.logger)  # (preflight checked that it is one)
    failed, result, optimizer = True, None, None
    try:
        try:
            data = instantiate(cfg.data, batch_size=t.batch_size, seed=t.seed, _convert_="all")
        except Exception as err:  # missing/corrupt data, bad data settings
            raise data_error(cfg, err) from err
        # again: preparing a dataset (the first run on a fresh data_dir) draws random numbers,
        # and the model's initial weights must not depend on whether it did
        keras.utils.set_random_seed(t.seed)
        strategy = make_strategy(t.strategy)
        with strategy.scope():
            try:  # the builders check their arguments against the data (e.g. its length)
                model = instantiate(cfg.model, **model_inputs(data), _convert_="all")
            except Exception as err:
                config_error = model_error(cfg, err)
                if config_error is None:
                    raise
                raise config_error from err
            total = t.epochs * data.steps_per_epoch
            if t.max_steps is not None:
                total = min(total, t.max_steps)
            try:  # the one construction of the optimizer (preflight checked its keywords)
                optimizer = build_optimizer(cfg, data.steps_per_epoch, total,
                                            tracker.stats_every)
            except Exception as err:  # what only the constructor checks
                raise optimizer_error(cfg, err) from err
            if isinstance(optimizer, DepthScheduled) and optimizer.auto_schedule:
                optimizer.compute_depths_from_model(model)
            config = OmegaConf.to_container(cfg, resolve=True)  # (checkpoints: as the user set it)
            recorded = copy.deepcopy(config)  # (W&B, results.json: as the optimizer got it)
            for name in run_length_params(cfg):
                recorded["optimizer"]["params"][name] = total
            # what it ran with; not in ``config``, so a resume is not refused over an upgrade
            recorded["versions"] = versions()
            ckpt = checked.checkpoint  # trainer.resume: fit continues from it
            if ckpt is not None:
                from nested_research.training.resume import check_model

                check_model(ckpt, model)  # before anything is written (the tracker's start)
                tracker.continue_run(ckpt.meta.get("wandb"), ckpt.step, ckpt.rows())
            tracker.start(recorded, output_dir)
            from nested_research.training.fit import fit

            checkpointer = None
            if t.get("checkpoint_every") is not None:
                from nested_research.training.checkpoint_callback import Checkpointer

                checkpointer = Checkpointer(
                    output_dir, t.checkpoint_every, data.steps_per_epoch,
                    keep=t.get("keep_checkpoints") or 2,
                    meta={"config": config, "wandb": tracker.resume_info()},
                    before_save=tracker.flush, log_rows=tracker.recent_rows,
                    defer_tail=8 if t.strategy else 0)
            result = fit(model, optimizer, data, epochs=t.epochs, max_steps=t.max_steps,
                         jit_compile=t.jit_compile, callbacks=tracker.callbacks(optimizer),
                         verbose=t.verbose,
                         progress_path=os.path.join(output_dir, "progress.jsonl"),
                         run_eagerly=t.run_eagerly,
                         max_nonfinite_steps=t.max_nonfinite_steps,
                         checkpointer=checkpointer, checkpoint=ckpt)
        model.save(os.path.join(output_dir, "model.keras"))
        value = _monitored(result.metrics, t.monitor)
        failed = not math.isfinite(value)
        results = {
            "metrics": result.metrics, "history": result.history, "steps": result.steps,
            "epochs": result.epochs, "wall_time": result.wall_time, "monitor": t.monitor,
            "skipped_steps": result.skipped_steps,
            "monitor_value": value, "config": recorded,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with open(os.path.join(output_dir, "results.json"), "w") as fh:
            json.dump(results, fh, indent=2, default=float)
        print(json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
        print(f"results: {os.path.join(output_dir, 'results.json')}")
        return value
    finally:
        tracker.finish(result.metrics if result else None, failed=failed, optimizer=optimizer)
        keras.mixed_precision.set_global_policy(previous_policy)


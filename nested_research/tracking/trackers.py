"""Experiment trackers: Weights & Biases (offline by default) and none.

A tracker is made at the entry point from the ``logger`` config group and
takes plain arguments.  What a job asks of it is the :class:`Tracker`
protocol, which both trackers implement in full: ``start(config, run_dir)``
before training, ``callbacks(optimizer)`` (Keras callbacks that log during
fit), ``finish(summary, failed)`` always, also when the run failed; for
checkpoints ``resume_info``, ``flush`` and ``recent_rows``, and for a resumed
run ``continue_run(info, step, rows)`` before ``start``.

What ``WandbTracker`` logs: during ``fit``, the rows of its
``callback.TrackingCallback`` (that module lists the keys), through a
background thread and a journal (``rows.py``); at the end,
``schedule/table`` (per layer: depth, interval, applied and expected
updates, ...), ``schedule/heatmap`` (layers x steps, updated or not;
``schedule_report.py``), ``schedule/lr`` (the learning rate used at every
step, also the steps between logged rows; at most ``callback.LR_POINTS``
rows, evenly thinned), ``layers/final`` (the ``memory_stats()`` table), the
summary metrics, ``results.json``, and the model as an artifact with
``log_model``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from typing import Protocol, runtime_checkable

import keras
import numpy as np

from nested_research.optimizers.protocols import RecordsStats, base_optimizer
from nested_research.tracking.schedule_report import (HEATMAP_CAP, SCHEDULE_COLUMNS, render_heatmap,
                                                      schedule_rows)
from nested_research.tracking.state_norms import KEYS as STATE_KEYS
from nested_research.optimizers.nested.layer_stats import FIELDS, Layout, format_table
from nested_research.tracking.callback import TrackingCallback
from nested_research.tracking.rows import AsyncLog, RowJournal, logged_extent
from nested_research.tracking.settings import NullSettings, WandbSettings



def default_run_name(config: dict) -> str:
    """``<experiment>-<optimizer>[-<memory>]-s<seed>`` from the resolved config (the memory
    mode where the config has one: ``optimizer=nested``)."""
    config = config or {}
    exp = config.get("experiment_name")
    if not exp:
        model = str((config.get("model") or {}).get("_target_", "")).rsplit(".", 1)[-1]
        data = (config.get("data") or {}).get("name")
        exp = "_".join(p for p in (data, model.replace("build_", "")) if p) or "run"
    opt = config.get("optimizer") or {}
    memory = (config.get("memory") or {}).get("memory_blend_mode")  # a baseline has no memory
    seed = (config.get("trainer") or {}).get("seed")
    parts = [exp, opt.get("name"), memory, None if seed is None else f"s{seed}"]
    return "-".join(str(p) for p in parts if p not in (None, ""))


def _hydra_job() -> dict | None:
    """The Hydra multirun job (number, overrides), or ``None`` outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        return {"num": int(hc.job.num), "override_dirname": hc.job.override_dirname,
                "sweep_dir": hc.sweep.dir}
    except Exception:  # noqa: BLE001 - best effort, never fails a run
        return None


# ---------------------------------------------------------------- trackers
@runtime_checkable
class Tracker(Protocol):
    """What a job asks of its tracker (``training/job.py``), in the order of the calls."""

    #: The optimizer's in-step statistics period the tracker reads at (0: never).
    stats_every: int

    def continue_run(self, info: dict | None, step: int, rows: list) -> None:
        """Continue the tracked run a checkpoint names (``info``: the ``resume_info()`` it
        stored; ``step``: batches trained; ``rows``: its newest rows).  Before ``start``."""

    def start(self, config: dict, run_dir: str) -> None:
        """Open the tracked run (``config``: the job's resolved config)."""

    def callbacks(self, optimizer) -> list:
        """Keras callbacks that log during ``fit``."""

    def resume_info(self) -> dict | None:
        """What a resumed run needs to continue the tracked run (stored in checkpoints)."""

    def flush(self) -> None:
        """Hand every queued row on (a checkpoint calls this before it is written)."""

    def recent_rows(self) -> list:
        """The newest rows logged (stored in checkpoints)."""

    def finish(self, summary: dict | None, failed: bool = False, optimizer=None) -> None:
        """Close the tracked run; always called, also when the run failed."""


class NullTracker:
    """Logs nothing; prints the per-layer table at the end.  A :class:`Tracker` whose resume
    hooks do nothing."""

    def __init__(self, stats_every: int = 0):
        self.stats_every = NullSettings(stats_every=stats_every).stats_every
        self.run_dir = None

    def continue_run(self, info: dict | None, step: int, rows: list) -> None:
        """Nothing to continue."""

    def start(self, config: dict, run_dir: str) -> None:
        self.run_dir = run_dir

    def callbacks(self, optimizer) -> list:
        return []

    def flush(self) -> None:
        """Nothing queued (a checkpoint calls this before it is written)."""

    def recent_rows(self) -> list:
        return []

    def resume_info(self) -> dict | None:
        return None

    def finish(self, summary: dict | None, failed: bool = False, optimizer=None) -> None:
        opt = base_optimizer(optimizer) if optimizer is not None else None
        if isinstance(opt, RecordsStats) and opt.built:
            print("\nPer-layer optimizer state:")
            print(format_table(opt.memory_stats()))


class WandbTracker:
    """A W&B run per training run; offline unless told otherwise, never waits on the network.

    ``WANDB_MODE`` and ``WANDB_DIR`` from the environment win over ``mode``
    and ``dir``.  Online mode that cannot start within ``init_timeout``
    seconds (no network, no credentials) falls back to offline with a warning;
    its end-of-run upload gives up after ``finish_timeout`` seconds (the data
    stays on disk for ``wandb sync``).
    """

    def __init__(self, mode: str = "offline", project: str = "nested-research",
                 entity: str | None = None, group: str | None = None, tags=(),
                 name: str | None = None, dir: str | None = None, stats_every: int = 100,
                 timing_every: int = 200, log_every: int = 10, log_model: bool = False,
                 sweep_id: str | None = None, init_timeout: float = 30.0,
                 finish_timeout: float = 120.0, heatmap_cap: int = HEATMAP_CAP,
                 async_log: bool = True):
        s = WandbSettings(mode=mode, project=project, entity=entity, group=group, tags=tags,
                          name=name, dir=dir, stats_every=stats_every, timing_every=timing_every,
                          log_every=log_every, log_model=log_model, sweep_id=sweep_id,
                          init_timeout=init_timeout, finish_timeout=finish_timeout,
                          heatmap_cap=heatmap_cap, async_log=async_log)
        self.mode = os.environ.get("WANDB_MODE") or s.mode
        self.project, self.entity = s.project, s.entity
        self.group, self.name, self.dir = s.group, s.name, s.dir
        self.tags = list(s.tags)
        self.sweep_id = s.sweep_id or os.environ.get("WANDB_SWEEP_ID") or None
        self.stats_every, self.timing_every = s.stats_every, s.timing_every
        self.log_every = max(s.log_every, 1)
        self.log_model = s.log_model
        self.init_timeout, self.finish_timeout = s.init_timeout, s.finish_timeout
        self.heatmap_cap = s.heatmap_cap
        self.async_log = s.async_log
        self.flush_timeout = 30.0  # seconds finish() waits for the log to be on disk
        # A resumed run (continue_run, before start): the W&B run id to continue, and the
        # batches already trained; rows already in that run are not re-logged.
        self.resume_id: str | None = None
        self.start_step: int | None = None
        self._logged: tuple[int, int] | None = None
        self.replay_rows: list | None = None  # the checkpoint's rows (logged if the run lacks them)
        self.journal = None
        self._logger: AsyncLog | None = None
        self.run = None
        self.run_dir = None
        self.callback: TrackingCallback | None = None
        self.wandb_dir = None      # where the run's wandb/ folder goes (start)
        self.wandb_run_dir = None

    def continue_run(self, info: dict | None, step: int, rows: list) -> None:
        """Continue the W&B run ``info`` names (its id, and where its files are) after
        ``step`` batches; ``rows``: the checkpoint's rows (logged again if the run lacks
        them).  Nothing without a W&B run id."""
        info = info or {}
        if not info.get("id"):
            return
        self.resume_id, self.start_step = info["id"], int(step)
        self.replay_rows = list(rows)
        if info.get("dir") and not os.environ.get("WANDB_DIR"):
            self.dir = info["dir"]  # the run's W&B files stay together

    # -- start
    def _init(self, wandb, mode: str, config: dict, wandb_dir: str, name, group, tags):
        settings = wandb.Settings(silent=True, x_disable_stats=True,
                                  init_timeout=self.init_timeout,
                                  login_timeout=self.init_timeout,
                                  finish_timeout=self.finish_timeout if mode == "online" else 0)
        deadline = time.monotonic() + self.init_timeout
        while True:
            try:
                return wandb.init(project=self.project, entity=self.entity, group=group,
                                  tags=tags, name=name, dir=wandb_dir, mode=mode, config=config,
                                  reinit="create_new", settings=settings, id=self.resume_id,
                                  resume="allow" if self.resume_id else None)
            except Exception as err:  # noqa: BLE001
                # A resumed run's id stays "in use" until the W&B service of the interrupted
                # process notices that its parent is gone: wait for it, up to init_timeout.
                if not self.resume_id or "in use" not in str(err) or \
                        time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def start(self, config: dict, run_dir: str) -> None:
        import wandb

        self.run_dir = run_dir
        config = dict(config or {})
        job = _hydra_job()
        name = self.name or default_run_name(config) + (f"-j{job['num']}" if job else "")
        if job:
            config["hydra_job"] = job
        tags = list(self.tags)
        if config.get("experiment_name"):
            tags.append(f"experiment:{config['experiment_name']}")
        if self.sweep_id:
            tags.append(f"sweep:{self.sweep_id}")
            config["sweep_id"] = self.sweep_id
        tags = list(dict.fromkeys(t[:64] for t in tags))
        # A sweep groups its trials (the local runner also sets WANDB_RUN_GROUP).
        group = os.environ.get("WANDB_RUN_GROUP") or self.sweep_id or self.group
        wandb_dir = os.environ.get("WANDB_DIR") or self.dir or run_dir
        os.makedirs(wandb_dir, exist_ok=True)
        self.wandb_dir = wandb_dir
        if self.resume_id:
            self._logged = logged_extent(wandb_dir, self.resume_id)
        try:
            self.run = self._init(wandb, self.mode, config, wandb_dir, name, group, tags)
        except Exception as err:  # noqa: BLE001 - online without network or credentials
            if self.mode != "online":
                raise
            warnings.warn(f"W&B online start failed ({err}); logging offline instead. "
                          "Upload later with `wandb sync`.", stacklevel=2)
            self.mode = "offline"
            self.run = self._init(wandb, "offline", config, wandb_dir, name, group, tags)
        self.run.define_metric("trainer/step")
        self.run.define_metric("trainer/epoch")
        for pattern in ("train/*", "layers/*", "timing/*", "schedule/*"):
            self.run.define_metric(pattern, step_metric="trainer/step")
        for pattern in ("val/*", "train_epoch/*"):
            self.run.define_metric(pattern, step_metric="trainer/epoch")
        run_files = getattr(self.run, "dir", None)  # (W&B's run object: absent or None offline)
        self.wandb_run_dir = os.path.dirname(run_files) if run_files else None

    def callbacks(self, optimizer) -> list:
        log = self.run.log
        if self.async_log:
            self._logger = log = AsyncLog(self.run.log)
        log = self.journal = RowJournal(log, *(self._logged or (-1, -1)))
        for row in self.replay_rows or []:  # rows a killed process logged but W&B never wrote
            log(row)
        self.callback = TrackingCallback(log, optimizer, self.stats_every,
                                         self.timing_every, self.log_every,
                                         start_step=self.start_step)
        return [self.callback]

    def flush(self) -> None:
        """Hand every queued row to W&B (a checkpoint calls this before it is written)."""
        if self._logger is not None:
            self._logger.flush(self.flush_timeout)

    def recent_rows(self) -> list:
        """The newest rows logged (stored in checkpoints, see ``rows.RowJournal``)."""
        return list(self.journal.rows) if self.journal is not None else []

    def resume_info(self) -> dict | None:
        """What a resumed run needs to continue this W&B run (stored in checkpoints)."""
        if self.run is None:
            return None
        return {"id": self.run.id, "dir": self.wandb_dir}

    # -- finish
    def _end_of_run(self, optimizer) -> None:
        """The per-step learning rates; final layer statistics, schedule table and heatmap."""
        import wandb

        cb = self.callback
        if cb is not None and cb.lr_used:
            self.run.log({"schedule/lr": wandb.Table(columns=["trainer/step", "lr"],
                                                     data=cb.lr_rows()),
                          "trainer/step": cb.step})
        base = base_optimizer(optimizer) if optimizer is not None else (cb.opt if cb else None)
        if base is None or not base.built:
            return
        step = int(keras.ops.convert_to_numpy(base.iterations))
        if cb is not None:
            stats = cb.read_stats() or {}
        else:
            stats = base.memory_stats() if isinstance(base, RecordsStats) else {}
        row = {"trainer/step": step}
        if stats:
            fields = [f for f in FIELDS + tuple(STATE_KEYS.values())
                      if any(r.get(f) is not None for r in stats.values())]
            row["layers/final"] = wandb.Table(
                columns=["layer"] + fields,
                data=[[layer] + [r.get(f) for f in fields] for layer, r in stats.items()])
        if not isinstance(base, RecordsStats):
            if stats:
                self.run.log(row)
            return
        layout = cb.reader.layout if cb is not None else Layout(base)
        row["schedule/table"] = wandb.Table(columns=SCHEDULE_COLUMNS,
                                            data=schedule_rows(layout, stats, step))
        out_dir = self.run_dir or self.wandb_run_dir or "."
        png = render_heatmap(os.path.join(out_dir, "schedule_heatmap.png"), layout, step,
                             self.heatmap_cap)
        if png:
            row["schedule/heatmap"] = wandb.Image(png, caption="black: layer updated at step")
        self.run.log(row)
        print("\nPer-layer optimizer state:")
        print(format_table(stats))

    def _save_outputs(self) -> None:
        import wandb

        if self.mode == "disabled":
            return

        results = os.path.join(self.run_dir or "", "results.json")
        # (W&B's run object: its files' folder, when it has one)
        if self.run_dir and os.path.exists(results) and getattr(self.run, "dir", None):
            copy = os.path.join(self.run.dir, "results.json")  # a copy, not a symlink
            shutil.copyfile(results, copy)
            self.run.save(copy, base_path=self.run.dir, policy="now")
        if self.log_model and self.callback is not None and self.callback.model is not None:
            path = os.path.join(self.run_dir or self.wandb_run_dir, "model.keras")
            if not os.path.exists(path):  # job.run saves it; a bare fit may not have
                self.callback.model.save(path)
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model",
                                      metadata={"name": self.run.name})
            artifact.add_file(path)
            self.run.log_artifact(artifact)

    def finish(self, summary: dict | None, failed: bool = False, optimizer=None) -> None:
        if self.run is None:
            return
        steps = [("queued rows", self._drain),
                 ("end-of-run statistics", lambda: self._end_of_run(optimizer)),
                 ("summary", lambda: self._summary(summary, failed)),
                 ("results/model", self._save_outputs)]
        try:
            for what, step in steps:
                try:
                    step()
                except Exception as err:  # noqa: BLE001 - finishing the run comes first
                    warnings.warn(f"W&B tracker: could not log the {what}: {err!r}",
                                  stacklevel=2)
        finally:
            self.run.finish(exit_code=1 if failed else 0)
            if self.mode != "disabled" and self.wandb_run_dir:
                # run.finish() can return before the service has written the log out.
                from nested_research.tracking.reader import wait_for_exit

                if not wait_for_exit(self.wandb_run_dir, timeout=self.flush_timeout):
                    warnings.warn(f"W&B run {self.wandb_run_dir}: the transaction log was "
                                  f"not complete after {self.flush_timeout:g} s", stacklevel=2)
                print(f"W&B {self.mode} run: {self.wandb_run_dir}\n"
                      f"  upload with: wandb sync {self.wandb_run_dir}")
            self.run = None

    def _drain(self) -> None:
        if self._logger is not None:
            logger, self._logger = self._logger, None
            try:
                logger.flush()
            finally:
                logger.close()

    def _summary(self, summary: dict | None, failed: bool) -> None:
        for key, value in (summary or {}).items():
            if isinstance(value, (int, float, np.floating, np.integer)):
                self.run.summary[key] = value
        if self.callback is not None:
            self.run.summary["trainer/steps"] = self.callback.step
        if failed:
            err = sys.exc_info()[1]
            self.run.summary["failed"] = True
            if err is not None:
                self.run.summary["error"] = f"{type(err).__name__}: {err}"[:1000]

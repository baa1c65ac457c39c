"""The Hydra plugins of the ``sweepers`` extra work with the app.

``hydra/sweeper=optuna`` (hydra-optuna-sweeper, also in the ``test`` extra so this runs in
CI) drives ``nested_research.train.main`` in process: the app returns ``trainer.monitor``, so
the sweep's best value is the best run's ``results.json`` ``monitor_value``, and a study
whose ``direction`` disagrees with ``trainer.monitor_mode`` stops first (``sweep_direction.py``).
``hydra/launcher=submitit_local`` (hydra-submitit-launcher, ``sweepers`` extra only) is
checked to compose; a one-job submitit run is a slow test.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir

from inprocess import main_in_process

from repo import CONF
TINY = ["logger=none", "trainer.max_steps=3", "trainer.verbose=0"]


def test_optuna_sweep_best_value_is_the_best_runs_monitor(tmp_path, data_dir, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    monkeypatch.setenv("NESTED_RESEARCH_OUTPUT_DIR", str(tmp_path))
    # trainer.monitor_mode is "max" (val/accuracy): the study maximizes.
    main_in_process(monkeypatch, "--multirun", "hydra/sweeper=optuna",
                     "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                     "hydra.sweeper.direction=${trainer.monitor_mode}imize",
                     "hydra.sweeper.sampler.seed=0",
                     "optimizer.learning_rate=interval(1e-4,1e-2)", *TINY)
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    runs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert len(runs) == 2
    assert {r["monitor"] for r in runs} == {"val/accuracy"}
    assert {r["config"]["trainer"]["monitor_mode"] for r in runs} == {"max"}
    top = max(runs, key=lambda r: r["monitor_value"])
    assert best["best_value"] == pytest.approx(top["monitor_value"], rel=1e-6)
    assert best["best_params"]["optimizer.learning_rate"] == pytest.approx(
        top["config"]["optimizer"]["learning_rate"])
    assert 1e-4 <= best["best_params"]["optimizer.learning_rate"] <= 1e-2


def test_optuna_direction_must_follow_monitor_mode(tmp_path, data_dir, monkeypatch, capsys):
    """Optuna minimizes by default; with trainer.monitor_mode=max the multirun stops first."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    monkeypatch.setenv("NESTED_RESEARCH_OUTPUT_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        main_in_process(monkeypatch, "--multirun", "hydra/sweeper=optuna",
                         "hydra.sweeper.n_trials=2", *TINY)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "hydra.sweeper.direction='minimize' must be 'maximize'" in err, err
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("launcher,target", [
    ("submitit_local", "LocalLauncher"), ("submitit_slurm", "SlurmLauncher")])
def test_submitit_launchers_compose(launcher, target):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(f".{target}")


@pytest.mark.slow
def test_submitit_local_runs_one_job(tmp_path, data_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = dict(os.environ, NESTED_RESEARCH_OUTPUT_DIR=str(tmp_path), WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "nested_research.train", "--multirun",
                           "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *TINY],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = tmp_path.glob("multirun/*/*/results.json")
    assert json.loads(result.read_text())["monitor"] == "val/accuracy"

"""Preflight (config, resume checkpoint, output and data directories) runs once per job."""

import functools
import json
import pathlib

import pytest
from hydra import compose, initialize_config_dir

from nested_research import train

from nested_research.training import preflight

from inprocess import main_in_process

from repo import CONF
TINY = ["optimizer=adam", "logger=none", "trainer.max_steps=2", "trainer.epochs=1",
        "trainer.verbose=0"]


@pytest.fixture
def constructions(monkeypatch):
    """``count(cls)``: patches ``cls.__init__`` to record each construction in ``built``."""
    built = []

    def count(cls):
        real = cls.__init__

        @functools.wraps(real)  # (the same signature: preflight reads it)
        def counted(self, *args, **kwargs):
            built.append(type(self).__name__)
            real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counted)
        return built
    return count


def _optimizer_class(name):
    import keras

    from nested_research import NestedLearningOptimizer

    return {"adam": keras.optimizers.Adam, "nested": NestedLearningOptimizer}[name]


@pytest.fixture
def preflight_calls(monkeypatch):
    """The output directories ``preflight.preflight`` was called with, in order."""
    calls, real = [], preflight.preflight

    def counted(cfg, output_dir):
        calls.append(str(output_dir))
        return real(cfg, output_dir)

    monkeypatch.setattr(preflight, "preflight", counted)
    return calls


def test_command_line_job_checks_once(tmp_path, data_dir, monkeypatch, preflight_calls):
    """The Hydra callback checks before the run directory exists; ``main`` does not again."""
    run_dir = tmp_path / "run"
    main_in_process(monkeypatch, *TINY, f"hydra.run.dir={run_dir}")
    assert preflight_calls == [str(run_dir)]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 2
    assert not train._PREFLIGHTED  # main took the callback's record


def test_direct_run_checks_once(tmp_path, data_dir, preflight_calls):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=TINY)
    out = tmp_path / "run"
    train.run(cfg, str(out))
    assert preflight_calls == [str(out)]
    assert (out / "results.json").exists()
    # A record checked for another directory is refused before anything is written.
    with pytest.raises(ValueError, match="preflight of another job"):
        train.run(cfg, str(tmp_path / "other"), checked=preflight.Preflighted(str(out)))
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("override,message", [
    ("+trainer.epoch=3", "trainer.epoch=3 is not a setting here; allowed: epochs, batch_size"),
    ("trainer.precision=float16", "trainer.precision='float16' must be one of"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints=0 must be"),
])
def test_trainer_settings_are_one_typed_group(override, message, tmp_path, monkeypatch, capsys):
    """The trainer's settings are checked as the optimizers' parameters are (a typed group):
    a bad value or an unknown key is one line naming ``trainer.<key>``, exit code 2, nothing
    written."""
    from inprocess import cli_in_process

    run_dir = tmp_path / "run"
    done = cli_in_process(monkeypatch, capsys, *TINY, override, f"hydra.run.dir={run_dir}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("optimizer", ["adam", "nested"])
def test_a_job_builds_its_optimizer_once(optimizer, tmp_path, data_dir, monkeypatch,
                                         constructions):
    """Preflight checks the optimizer's keywords without building it; the job builds it once,
    when the data has fixed the run's length."""
    cls = _optimizer_class(optimizer)
    built = constructions(cls)
    run_dir = tmp_path / "run"
    main_in_process(monkeypatch, *TINY[1:], f"optimizer={optimizer}", f"hydra.run.dir={run_dir}")
    assert built == [cls.__name__]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 2


@pytest.mark.parametrize("optimizer,overrides,needle", [
    ("nested", ["memory.short_term_decay=1.5"], "short_term_decay=1.5 must be a number in [0, 1)"),
    ("nested", ["+optimizer.params.foo=1"], "foo=1 is not a parameter of NestedLearningOptimizer"),
    ("nested", ["optimizer.params.clipnorm=1", "+optimizer.params.global_clipnorm=2"],
     "clipnorm=1, global_clipnorm=2: set at most one of clipnorm, clipvalue and global_clipnorm"),
    ("adam", ["+optimizer.params.beta_3=0.5"], "beta_3=0.5 is not a parameter of Adam; allowed: "),
    ("adam", ["+optimizer.params.gradient_accumulation_steps=1"],
     "gradient_accumulation_steps=1 must be an integer >= 2"),
])
def test_optimizer_keywords_are_checked_without_building_it(optimizer, overrides, needle,
                                                            constructions):
    cls = _optimizer_class(optimizer)
    built = constructions(cls)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        bad = compose("config", overrides=[f"optimizer={optimizer}", *overrides])
        good = compose("config", overrides=[f"optimizer={optimizer}"])
    with pytest.raises(train.ConfigError) as err:
        preflight.validate(bad)
    assert needle in str(err.value)
    preflight.validate(good)
    assert built == []

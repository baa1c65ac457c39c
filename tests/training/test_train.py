"""The Hydra framework: every config option composes and builds; the entry point runs."""

import functools
import json
import os
import pathlib
import re
import sys

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nested_research import NestedLearningOptimizer
from nested_research.train import ConfigError, build_optimizer, check_trainer, run, validate

import early
from early import selected

from repo import ROOT
CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
TINY_RECALL = ["data.builder_kwargs.config.num_train=256", "data.builder_kwargs.config.num_test=64"]
# One Transformer block instead of two for the tiny runs: tracing its training step is most of
# such a run (what is checked, that the job runs through, does not depend on the depth).
TINY_TRANSFORMER = ["model.num_layers=1"]


def cfg_for(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_every_group_has_options():
    assert {"memory", "blend_mode", "schedule_curve", "lr_schedule", "optimizer", "model",
            "data", "trainer", "logger", "experiment", "paths"} <= set(GROUPS)
    counts = {g: sum(1 for grp, _ in OPTIONS if grp == g) for g in GROUPS}
    assert counts["memory"] >= 4 and counts["blend_mode"] >= 3 and counts["lr_schedule"] >= 3
    assert counts["schedule_curve"] >= 5 and counts["optimizer"] >= 6 and counts["model"] >= 3


def test_groups_set_disjoint_keys():
    """Each group lives under its own key: no two groups' files write the same top-level key."""
    owners = {}
    for group, option in OPTIONS:
        if group == "experiment":
            continue
        text = (CONF / group / f"{option}.yaml").read_text()
        assert "@package _global_" not in text, (group, option)
        owners.setdefault(group, set())
    cfg = cfg_for()
    for group in owners:
        assert group in cfg, group


def _mock_shapes(name):
    return {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}[name]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_compose_and_instantiate_every_option(group, option, data_dir):
    from hydra.utils import instantiate

    overrides = [f"{group}={option}"]
    if group == "data" and option == "recall" or option == "recall_transformer":
        overrides += TINY_RECALL
    cfg = cfg_for(*overrides)
    assert OmegaConf.to_container(cfg, resolve=True)  # everything resolves
    if group in ("memory", "blend_mode", "schedule_curve", "lr_schedule", "optimizer"):
        opt = build_optimizer(cfg, steps_per_epoch=10, total_steps=100, stats_every=0)
        if group == "optimizer":
            assert opt.__class__.__name__.lower().startswith(
                {"nested": "nestedlearning", "sgd": "sgd", "delta_momentum": "deltamomentum",
                 "ademamix_no_warmup": "ademamix"}.get(option, option))
            return
        assert isinstance(opt, NestedLearningOptimizer)
        for key, value in OmegaConf.to_container(cfg[group], resolve=True).items():
            if key.startswith("_"):
                continue
            if group == "lr_schedule":
                assert getattr(opt._learning_rate, key) == value
            elif key == "layer_update_intervals":
                assert [list(p) for p in opt.layer_update_intervals] == (value or [])
            else:
                assert getattr(opt, key) == value, (key, value)
    elif group == "model":
        kw = {"input_shape": (8, 8, 1), "num_classes": 10}
        if option in ("transformer", "cms_transformer", "hope"):  # (chunk sizes <= L = 12)
            kw = {"input_shape": (12,), "num_classes": 16, "vocab_size": 16}
        model = instantiate(cfg.model, **kw, _convert_="all")
        assert len([l for l in model.layers if l.trainable_weights]) >= 4
    elif group == "data":
        if option in ("mnist", "fashion_mnist", "cifar10"):
            import tensorflow_datasets as tfds
            with tfds.testing.mock_data(num_examples=40):
                bundle = instantiate(cfg.data, batch_size=8, seed=0, _convert_="all")
            assert tuple(bundle.input_shape) == _mock_shapes(option)
        else:
            bundle = instantiate(cfg.data, batch_size=8, seed=0, _convert_="all")
        assert bundle.num_classes >= 10 and bundle.train_size > 0
    elif group == "trainer":
        check_trainer(cfg.trainer)
    elif group == "logger":
        tracker = instantiate(cfg.logger)
        assert tracker.stats_every == cfg.logger.stats_every
    elif group == "experiment":
        validate(cfg)
        assert cfg.experiment_name == option
    else:
        assert cfg[group]


#: Tiny runs shared by tests that run the same composed config (``_tiny(share=True)``): the
#: default memory option and the default model are one job.
_SHARED: dict = {}


def _tiny(tmp_path, *overrides, steps=4, share=False):
    cfg = cfg_for("logger=none", f"trainer.max_steps={steps}", "trainer.epochs=1",
                  "trainer.verbose=0", *overrides)
    key = OmegaConf.to_yaml(cfg)
    if share and key in _SHARED:
        return _SHARED[key]
    out = tmp_path / "run"
    value = run(cfg, str(out))
    results = json.loads((out / "results.json").read_text())
    if share:
        _SHARED[key] = value, results
    return value, results


@pytest.mark.parametrize("memory", ["attention", "fixed", "adaptive", "none"])
def test_main_entry_every_memory_option(memory, tmp_path, data_dir):
    value, results = _tiny(tmp_path, f"memory={memory}", share=True)
    assert results["steps"] == 4
    assert results["config"]["memory"]["memory_blend_mode"] == memory
    assert value == results["metrics"]["val/accuracy"] == results["monitor_value"]
    assert {"train/loss", "val/loss", "test/accuracy", "val/best_loss"} <= set(results["metrics"])


def test_results_record_the_versions_and_commit(tmp_path, data_dir):
    """``results.json`` records what the run was made with (the shared tiny run above)."""
    import importlib.metadata
    import platform
    import shutil
    import subprocess

    import nested_research

    _, results = _tiny(tmp_path, "memory=attention", share=True)
    versions = results["config"]["versions"]
    assert versions["python"] == platform.python_version()
    for name in ("tensorflow", "keras", "numpy"):
        assert versions[name] == importlib.metadata.version(name), name
    assert versions["nested_research"] == nested_research.__version__
    package = os.path.dirname(nested_research.__file__)
    git = shutil.which("git") and subprocess.run(
        ["git", "-C", package, "ls-files", "--error-unmatch", "__init__.py"],
        capture_output=True).returncode == 0
    if git:  # the tests run from a checkout: its commit
        head = subprocess.run(["git", "-C", package, "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert versions["git_commit"] == head and isinstance(versions["git_dirty"], bool)
    else:
        assert versions["git_commit"] is None


@pytest.mark.parametrize("model,extra", [("mlp", []), ("cnn", []),
                                         ("transformer",
                                          ["data=recall"] + TINY_RECALL + TINY_TRANSFORMER)])
def test_main_entry_every_model(model, extra, tmp_path, data_dir):
    value, results = _tiny(tmp_path, f"model={model}", *extra, share=True)
    assert results["steps"] == 4 and np.isfinite(results["metrics"]["train/loss"])


@pytest.mark.parametrize("experiment", sorted(o for g, o in OPTIONS if g == "experiment"))
def test_one_run_per_experiment(experiment, tmp_path, data_dir):
    extra = TINY_RECALL + TINY_TRANSFORMER if "recall" in experiment else \
        ["data.builder_kwargs.config.max_bytes=20000"] if experiment == "lm_transformer" else []
    value, results = _tiny(tmp_path, f"experiment={experiment}", *extra, steps=3)
    assert results["config"]["experiment_name"] == experiment and results["steps"] == 3


def test_baselines_have_no_memory_groups(data_dir):
    cfg = cfg_for("optimizer=adam")
    assert not {"memory", "blend_mode", "schedule_curve"} & set(cfg)
    opt = build_optimizer(cfg, 10, 100, 0)
    assert type(opt) is keras.optimizers.Adam


def test_same_seed_same_metrics(tmp_path, data_dir):
    """Same seed, same metrics, also when the first run prepares the dataset (a fresh data_dir:
    preparing must not move the random state the model's initial weights come from)."""
    fresh = f"paths.data_dir={tmp_path / 'fresh_data'}"
    a = _tiny(tmp_path / "a", fresh, "trainer.seed=3", steps=6)[1]["metrics"]
    assert (tmp_path / "fresh_data").is_dir()
    b = _tiny(tmp_path / "b", fresh, "trainer.seed=3", steps=6)[1]["metrics"]
    c = _tiny(tmp_path / "c", fresh, "trainer.seed=4", steps=6)[1]["metrics"]
    assert a == b
    assert a != c


@pytest.mark.parametrize("memory", ["attention", "fixed", "adaptive", "none"])
def test_defaults_learn_digits(memory, tmp_path, data_dir):
    """The default job (10 epochs on digits) reaches >= 90% test accuracy in every memory mode."""
    cfg = cfg_for("logger=none", "trainer.verbose=0", f"memory={memory}")
    run(cfg, str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"]["test/accuracy"] >= 0.90, results["metrics"]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("override,needle", [
    ("trainer.epochs=abc", "trainer.epochs='abc'"),
    ("trainer.precision=fp8", "trainer.precision='fp8'"),
    ("memory.short_term_decay=1.5", "short_term_decay=1.5"),
    ("schedule_curve.max_interval=0", "max_interval=0"),
    ("lr_schedule.lr_warmup_fraction=0.7", "sum to 1"),
    ("optimizer.learning_rate=-1", "optimizer.learning_rate=-1"),
])
def test_validate_rejects_bad_values(override, needle, data_dir):
    with pytest.raises(ConfigError, match=None) as err:
        validate(cfg_for(override))
    assert needle in str(err.value)


def _cli(*args, env_extra=None, cwd=None):
    """The CLI in a subprocess, with the package's own TF_CPP_MIN_LOG_LEVEL default: a call
    that runs it with the environment and working directory of now (tests/early.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(WANDB_MODE="offline", **(env_extra or {}))
    return functools.partial(
        early.run, [sys.executable, "-m", "nested_research.train", *args],
        env=env, cwd=cwd or os.getcwd(), timeout=300)


def _cli_bad_input(tmp_path):
    env = {"NESTED_RESEARCH_DATA_DIR": str(tmp_path / "never_created"),
           "NESTED_RESEARCH_OUTPUT_DIR": str(tmp_path)}
    commands = [_cli("memory.short_term_decay=1.5", env_extra=env),
                _cli("trainer.batch_size=big", env_extra=env),
                _cli("memory=telepathy", env_extra=env)]
    return lambda: [command() for command in commands]


def _cli_cfg_job_and_multirun(tmp_path):
    env = {"NESTED_RESEARCH_OUTPUT_DIR": str(tmp_path)}
    commands = [_cli("--cfg", "job", "memory=fixed", env_extra=env),
                _cli("-m", "memory=attention,fixed", "logger=none", "trainer.max_steps=3",
                     "trainer.verbose=0", env_extra=env)]
    return lambda: [command() for command in commands]


@pytest.fixture(scope="module", autouse=True)
def cli_runs(request, tmp_path_factory, digits_prepared):
    """The command-line tests' processes, one after the other in a thread from the module's
    first test on (tests/early.py); their tests come last.  ``{test name: dir, "runs": Early}``.
    """
    found, jobs = {}, {}
    for test, commands in [("test_cli_bad_input_short_message_no_data_built", _cli_bad_input),
                           ("test_cli_cfg_job_and_multirun", _cli_cfg_job_and_multirun)]:
        if selected(request, test):
            found[test] = tmp_path_factory.mktemp(test[len("test_"):][:30])
            jobs[test] = commands(found[test])
    found["runs"] = early.Early(jobs)
    yield found
    found["runs"].close()


def test_cli_bad_input_short_message_no_data_built(cli_runs):
    name = "test_cli_bad_input_short_message_no_data_built"
    fresh = cli_runs[name] / "never_created"
    bad_value, bad_type, unknown = cli_runs["runs"].result(name)
    assert bad_value.returncode == 2
    assert "short_term_decay=1.5" in bad_value.stderr and "Traceback" not in bad_value.stderr
    assert bad_type.returncode == 2 and "trainer.batch_size='big'" in bad_type.stderr
    assert unknown.returncode != 0
    assert "telepathy" in unknown.stderr and "attention" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert not fresh.exists()


def test_cli_cfg_job_and_multirun(cli_runs):
    name = "test_cli_cfg_job_and_multirun"
    tmp_path = cli_runs[name]
    shown, multi = cli_runs["runs"].result(name)
    assert shown.returncode == 0 and "memory_blend_mode: fixed" in shown.stdout
    assert multi.returncode == 0, multi.stderr[-2000:]
    # A quiet console by default: no TensorFlow C++ INFO line ("I0000 00:00:17... port.cc:153]
    # oneDNN custom operations are on", "I tensorflow/...") nor absl's pre-init notice.
    info = [line for line in multi.stderr.splitlines()
            if re.match(r"I\d{4} \d\d:\d\d:\d+\.\d+ ", line) or "I tensorflow/" in line
            or "absl::InitializeLog" in line]
    assert not info, info
    results = sorted(tmp_path.glob("multirun/*/*/results.json"))
    assert len(results) == 2
    modes = {json.loads(p.read_text())["config"]["memory"]["memory_blend_mode"] for p in results}
    assert modes == {"attention", "fixed"}
    assert len({p.parent for p in results}) == 2

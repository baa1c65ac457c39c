"""The Hydra groups mirror the optimizer's typed parameter groups (``hparams.py``): each key a
group file sets is a parameter of the group it stands for, every parameter is set by exactly
one place, and the files of one group set the same keys (but for the keys that do not apply
to ``schedule_curve=none``/``manual``).

The groups ``memory``, ``blend_mode`` and ``schedule_curve`` come with ``optimizer=nested``
(``config_groups.py``): a baseline's config, run directory and W&B name have none of them; the
nested optimizer is built as before; a command line that sets one for a baseline stops with one
line; release 0.2's checkpoint configs, which have them everywhere, still resume."""

import glob
import importlib.util
import json
import os
import re

import keras
import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nested_research import NestedLearningOptimizer
from nested_research.optimizers.nested.compression import CompressionParams
from nested_research.optimizers.nested.intervals import IntervalParams
from nested_research.optimizers.nested.memory import MemoryParams
from nested_research.optimizers.nested.optimizer import MomentParams, StateParams
from nested_research.tracking.trackers import default_run_name
from nested_research.training.builders import build_optimizer
from nested_research.training.config_groups import (OPTIMIZER_GROUPS, check_group_overrides,
                                                    register_resolvers)
from nested_research.training.resume import check_resume, config_diff, current_names
from nested_research.core.errors import ConfigError

from inprocess import cli_in_process
from repo import CONF, FIXTURES

#: Hydra group -> the parameters its files set (each file sets all of them: disjoint groups)
GROUPS = {
    "memory": set(MemoryParams.names()) - {"memory_mix"},
    "blend_mode": {"memory_mix"},
    "schedule_curve": set(IntervalParams.names()) - {"variable_depths"},
}
#: set elsewhere: depths from the model (trainer), the rate and its schedule (optimizer.
#: learning_rate, lr_schedule), the statistics period (logger.stats_every), the name
ELSEWHERE = {"variable_depths", "steps_per_epoch", "lr_warmup_fraction", "lr_hold_fraction",
             "lr_decay_fraction", "lr_min_fraction", "stats_every", "learning_rate", "name"}


def _files(group):
    out = {}
    for path in sorted(glob.glob(os.path.join(CONF, group, "*.yaml"))):
        with open(path) as fh:
            out[os.path.basename(path)] = {k for k in yaml.safe_load(fh) if k != "defaults"}
    return out


#: The depth-curve keys, which apply only with ``auto_schedule: true``, and the update-window
#: keys, which apply only where an interval is above 1.
CURVE_KEYS = {"schedule_curve", "max_interval", "reverse_depth_order"}
WINDOW_KEYS = {"warmup_steps", "accumulate_gradients"}
#: Files that set fewer keys than their group has: those that apply to them.
APPLIES = {("schedule_curve", "manual.yaml"): GROUPS["schedule_curve"] - CURVE_KEYS,
           ("schedule_curve", "none.yaml"): GROUPS["schedule_curve"] - CURVE_KEYS - WINDOW_KEYS}


def test_each_group_file_sets_exactly_its_parameters():
    for group, params in GROUPS.items():
        files = _files(group)
        assert files, group
        for name, keys in files.items():
            want = APPLIES.get((group, name), params)
            assert keys == want, (group, name, keys ^ want)


def test_every_parameter_is_set_in_one_place():
    import inspect

    with open(os.path.join(CONF, "optimizer", "nested.yaml")) as fh:
        optimizer_params = set(yaml.safe_load(fh)["params"]) - {"_target_"}
    keras_keys = {"weight_decay", "clipnorm"}
    assert set(MomentParams.names()) | set(CompressionParams.names()) | {"state_dtype",
                                                                        "skip_nonfinite"} \
        == optimizer_params - keras_keys
    assert set(StateParams.names()) - {"stats_every"} <= optimizer_params
    places = [*GROUPS.values(), optimizer_params - keras_keys, ELSEWHERE]
    signature = set(inspect.signature(NestedLearningOptimizer).parameters) - {"kwargs"}
    assert set().union(*places) == signature
    assert sum(len(p) for p in places) == len(signature)  # no parameter in two places


# ---------------------------------------------------------------- the groups come with nested

BASELINES = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(CONF, "optimizer"))
                   if f.endswith(".yaml") and f != "nested.yaml")


def _compose(*overrides, hydra=False):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def _names(*overrides):
    """The run directory's name (after its time) and the W&B run's default name."""
    cfg = _compose(*overrides, hydra=True)
    run_dir = os.path.basename(cfg.hydra.run.dir)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_.+", run_dir), run_dir
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                 resolve=True)
    return run_dir[len("2026-01-01_12-00-00_"):], default_run_name(job)


@pytest.mark.parametrize("name", BASELINES)
def test_a_baseline_has_none_of_the_groups(name):
    cfg = _compose(f"optimizer={name}")
    assert not set(OPTIMIZER_GROUPS) & set(cfg), name
    assert "uses_memory_groups" not in cfg.optimizer
    assert set(OPTIMIZER_GROUPS) <= set(_compose())  # optimizer=nested, the default


def test_run_directory_and_wandb_name_carry_the_memory_mode_only_for_nested():
    assert _names("optimizer=adam") == ("adam", "sklearn_digits_mlp-adam-s0")
    assert _names("experiment=lm_transformer") == ("adam", "lm_transformer-adam-s0")
    assert _names() == ("nested_attention", "sklearn_digits_mlp-nested-attention-s0")
    assert _names("memory=fixed", "trainer.seed=2") == ("nested_fixed",
                                                       "sklearn_digits_mlp-nested-fixed-s2")
    assert _names("experiment=lm_transformer", "optimizer=nested", "memory=none") == \
        ("nested_none", "lm_transformer-nested-none-s0")


def test_cfg_job_of_a_baseline_shows_only_what_applies(monkeypatch, capsys):
    shown = cli_in_process(monkeypatch, capsys, "--cfg", "job", "optimizer=adam")
    assert shown.returncode == 0, shown.stderr
    top = {line.split(":")[0] for line in shown.stdout.splitlines() if re.match(r"\w", line)}
    assert top == {"experiment_name", "data", "model", "optimizer", "lr_schedule", "trainer",
                   "logger", "paths"}
    assert "memory" not in shown.stdout and "schedule_curve" not in shown.stdout


#: The nested optimizer's arguments with the default groups, written out (the values of the
#: conf files before and after the groups moved into conf/optimizer/nested.yaml).
DEFAULT = dict(beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
               use_gradient_compression=False, compression_rank=None, weight_decay=None,
               clipnorm=None, state_dtype="float32", skip_nonfinite=False,
               memory_blend_mode="attention", short_term_decay=0.94, medium_term_decay=0.994,
               long_term_decay=0.9999, short_term_weight=0.1, medium_term_weight=0.3,
               long_term_weight=0.6, adaptive_rate=0.1, attention_scoring="dot",
               attention_temperature=0.25, memory_mix=0.5, auto_schedule=True,
               schedule_curve="cosine", max_interval=6, reverse_depth_order=True,
               warmup_steps=0, accumulate_gradients=True, layer_update_intervals=None,
               default_interval=1, stats_every=0)
MANUAL_RULES = [("(dense|conv)_0/|/embed/|/pos_embed/", 4), ("(dense|conv)_1/|block0_", 2)]
#: What ``schedule_curve=none``/``manual`` set now (the constructor's defaults fill the rest),
#: and what release 0.2's files set besides, which does not apply to them.
NONE = dict(auto_schedule=False, layer_update_intervals=None, default_interval=1)
NONE_BEFORE = dict(schedule_curve="cosine", max_interval=1, reverse_depth_order=True,
                   warmup_steps=0, accumulate_gradients=True)
MANUAL = dict(auto_schedule=False, layer_update_intervals=MANUAL_RULES, default_interval=1,
              warmup_steps=0, accumulate_gradients=True)
MANUAL_BEFORE = dict(schedule_curve="cosine", max_interval=6, reverse_depth_order=True)
BUILT = [
    ([], {}),
    (["memory=fixed"], dict(memory_blend_mode="fixed")),
    (["memory=adaptive"], dict(memory_blend_mode="adaptive")),
    (["memory=none"], dict(memory_blend_mode="none")),
    (["blend_mode=memory_only"], dict(memory_mix=1.0)),
    (["schedule_curve=linear"], dict(schedule_curve="linear")),
    (["schedule_curve=none"], NONE),
    (["schedule_curve=manual"], MANUAL),
    (["experiment=lm_transformer", "optimizer=nested", "memory=fixed",
      "memory.long_term_decay=0.999"], dict(memory_blend_mode="fixed", long_term_decay=0.999)),
]


@pytest.mark.parametrize("overrides,changed", BUILT,
                         ids=[" ".join(o) or "default" for o, _ in BUILT])
def test_the_nested_optimizer_is_built_as_before(overrides, changed):
    cfg = _compose("lr_schedule=constant", *overrides)
    built = build_optimizer(cfg, steps_per_epoch=10, total_steps=100, stats_every=0)
    want = NestedLearningOptimizer(learning_rate=0.001, **{**DEFAULT, **changed})
    assert built.get_config() == want.get_config()


@pytest.mark.parametrize("now,before", [(NONE, NONE_BEFORE), (MANUAL, MANUAL_BEFORE)],
                         ids=["none", "manual"])
def test_the_keys_none_and_manual_dropped_change_no_step(now, before):
    """The schedule_curve keys that ``none``/``manual`` no longer set (release 0.2's values
    there) change neither the intervals nor a step: the same variables after the same steps."""
    def run(kwargs):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="dense_0"),
                                  keras.layers.Dense(5, name="dense_1"),
                                  keras.layers.Dense(3, name="dense_2")])
        opt = NestedLearningOptimizer(learning_rate=0.01, **{**DEFAULT, **kwargs})
        rng = np.random.default_rng(0)
        for _ in range(5):
            grads = [rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]
            opt.apply_gradients(zip(grads, model.trainable_variables))
        return opt._intervals, [np.asarray(v) for v in model.variables + opt.variables]

    intervals, values = run(now)
    intervals_before, values_before = run({**now, **before})
    assert intervals == intervals_before and max(intervals) == (4 if now is MANUAL else 1)
    assert len(values) == len(values_before)
    for a, b in zip(values, values_before):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- a group set for a baseline
@pytest.mark.parametrize("argv,key", [
    (["optimizer=adam", "memory=fixed"], "memory=fixed"),
    (["optimizer=sgd", "+blend_mode=memory_only"], "+blend_mode=memory_only"),
    (["experiment=lm_transformer", "schedule_curve.max_interval=3"],
     "schedule_curve.max_interval=3"),
    (["-m", "optimizer=nested,adam", "memory=fixed,none"], "memory=fixed,none"),
])
def test_a_group_set_for_a_baseline_is_one_line(argv, key):
    with pytest.raises(ConfigError) as err:
        check_group_overrides(argv)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{key}: optimizer=")
    assert "has no" in message and "optimizer=nested" in message


@pytest.mark.parametrize("argv", [
    ["memory=fixed"], ["optimizer=nested", "schedule_curve=none", "blend_mode=memory_heavy"],
    ["experiment=lm_transformer", "optimizer=nested", "memory=fixed"],
    ["-m", "memory=attention,fixed", "trainer.seed=0,1"], ["optimizer=adam"], [],
    ["optimizer=adam", "memory=fixed,none"],  # not a multirun: Hydra's own error comes next
])
def test_groups_set_for_nested_pass(argv):
    check_group_overrides(argv)


def test_the_command_line_stops_with_code_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    done = cli_in_process(monkeypatch, capsys, "optimizer=adam", "memory=fixed",
                          f"paths.output_dir={tmp_path / 'out'}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "nested_research.train: error: memory=fixed: optimizer=adam has no memory group "
        "(memory, blend_mode and schedule_curve come with optimizer=nested only); drop "
        "memory=fixed or choose optimizer=nested"]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- release 0.2's configs resume
RELEASE = FIXTURES / "release_0_2"


def _release_run_args():
    spec = importlib.util.spec_from_file_location("make_fixtures", RELEASE / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RUN_ARGS


def test_release_0_2_checkpoint_has_the_config_of_today():
    """The killed 0.2.0 run (optimizer=nested) against a config composed today for its command
    line: no difference (its ``optimizer.uses_memory_groups`` is gone), and ``check_resume``
    takes its checkpoint."""
    saved = json.loads((RELEASE / "run_killed" / "checkpoints" / "ckpt-000000020" /
                        "meta.json").read_text())["config"]
    assert saved["optimizer"]["uses_memory_groups"] is True
    config = OmegaConf.to_container(_compose(*_release_run_args()), resolve=True)
    assert config_diff(current_names(saved), config) == []
    assert check_resume(str(RELEASE / "run_killed"), config).step == 20


def test_a_baseline_config_of_release_0_2_is_no_different():
    """0.2 wrote the nested optimizer's groups and ``uses_memory_groups: false`` into a
    baseline's config, and the depth-curve keys into ``schedule_curve=none``'s: missing now,
    they are no difference; where both configs have a key, it is compared."""
    nested = OmegaConf.to_container(_compose(), resolve=True)
    adam = OmegaConf.to_container(_compose("optimizer=adam"), resolve=True)
    saved = {**adam, "optimizer": {**adam["optimizer"], "uses_memory_groups": False},
             **{g: nested[g] for g in OPTIMIZER_GROUPS}}
    assert config_diff(saved, adam) == []
    none = OmegaConf.to_container(_compose("schedule_curve=none"), resolve=True)
    saved = {**none, "schedule_curve": {**none["schedule_curve"], **NONE_BEFORE}}
    assert config_diff(saved, none) == []
    fixed = OmegaConf.to_container(_compose("memory=fixed"), resolve=True)
    assert [k for k, _, _ in config_diff(fixed, nested)] == ["memory.memory_blend_mode"]
    assert [k for k, _, _ in config_diff(nested, none)] == ["schedule_curve.auto_schedule"]
    assert "schedule_curve.auto_schedule" in [k for k, _, _ in config_diff(none, nested)]

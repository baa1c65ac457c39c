"""One learning-rate path: the ``lr_schedule`` group, the nested optimizer's seed keywords and
``set_steps_per_epoch`` all make the schedule through ``RunSchedule.for_run``, and the optimizer's
seed keywords describe whichever schedule it runs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from nested_research import NestedLearningOptimizer, PerEpochSchedule, WarmupCosineSchedule
from nested_research.core.errors import ConfigError
from nested_research.training.builders import build_learning_rate
from repo import CONF

STEPS = np.arange(0, 60)


def _cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _rates(schedule):
    return np.array([float(schedule(s)) for s in STEPS])


@pytest.mark.parametrize("group,expected", [
    ("per_epoch", lambda lr: PerEpochSchedule(lr, 7, 0.1, 0.2, 0.7, 0.05)),
    ("cosine", lambda lr: WarmupCosineSchedule(lr, 50, 5, 0.1)),
])
def test_the_group_sizes_its_schedule_for_the_run(group, expected):
    extra = {"per_epoch": ["lr_schedule.lr_warmup_fraction=0.1", "lr_schedule.lr_hold_fraction=0.2",
                           "lr_schedule.lr_decay_fraction=0.7", "lr_schedule.lr_min_fraction=0.05"],
             "cosine": ["lr_schedule.warmup_steps=5", "lr_schedule.lr_min_fraction=0.1"]}[group]
    cfg = _cfg(f"lr_schedule={group}", "optimizer.learning_rate=0.02", *extra)
    got = build_learning_rate(cfg, steps_per_epoch=7, total_steps=50)
    assert type(got) is type(expected(0.02))
    np.testing.assert_array_equal(_rates(got), _rates(expected(0.02)))


def test_constant_is_the_rate_itself():
    assert build_learning_rate(_cfg("lr_schedule=constant", "optimizer.learning_rate=0.3"),
                               steps_per_epoch=7, total_steps=50) == 0.3


def test_a_target_that_is_not_a_run_schedule_is_refused_in_one_line():
    cfg = _cfg("lr_schedule._target_=keras.optimizers.schedules.ExponentialDecay")
    with pytest.raises(ConfigError) as err:
        build_learning_rate(cfg, steps_per_epoch=7, total_steps=50)
    message = str(err.value)
    assert "\n" not in message
    assert "lr_schedule._target_='keras.optimizers.schedules.ExponentialDecay'" in message
    assert "RunSchedule" in message


def test_the_seed_keywords_describe_a_schedule_given_by_the_group():
    """The trainer's schedule, handed to the optimizer, reads back through the seed keywords,
    and its config rebuilds the same schedule."""
    schedule = PerEpochSchedule(0.01, 9, 0.1, 0.3, 0.6, 0.02)
    opt = NestedLearningOptimizer(learning_rate=schedule, max_interval=1)
    assert opt.steps_per_epoch == 9
    assert (opt.lr_warmup_fraction, opt.lr_hold_fraction, opt.lr_decay_fraction,
            opt.lr_min_fraction) == (0.1, 0.3, 0.6, 0.02)
    config = opt.get_config()
    assert config["learning_rate"] == 0.01 and config["steps_per_epoch"] == 9
    rebuilt = NestedLearningOptimizer.from_config(copy.deepcopy(config))
    assert rebuilt._learning_rate.get_config() == schedule.get_config()


def test_seed_keywords_group_and_set_steps_per_epoch_give_one_schedule():
    fractions = dict(lr_warmup_fraction=0.2, lr_hold_fraction=0.2, lr_decay_fraction=0.6,
                     lr_min_fraction=0.03)
    by_keywords = NestedLearningOptimizer(learning_rate=0.05, steps_per_epoch=6, **fractions)
    by_group = NestedLearningOptimizer(learning_rate=PerEpochSchedule.for_run(
        0.05, steps_per_epoch=6, total_steps=None, **fractions))
    by_method = NestedLearningOptimizer(learning_rate=0.05, **fractions)
    by_method.set_steps_per_epoch(6)
    configs = [o._learning_rate.get_config() for o in (by_keywords, by_group, by_method)]
    assert configs[0] == configs[1] == configs[2]
    assert by_keywords.get_config() == by_group.get_config() == by_method.get_config()

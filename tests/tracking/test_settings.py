"""The trackers' settings are one typed group each (``tracking/settings.py``), checked as the
optimizers' parameters and the trainer's settings are: one line naming ``logger.<key>``."""

from __future__ import annotations

import pytest

from nested_research.tracking import NullTracker, WandbTracker
from nested_research.tracking.settings import WandbSettings


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "cloud"}, "logger.mode='cloud' must be one of"),
    ({"stats_every": -1}, "logger.stats_every=-1 must be"),
    ({"log_model": "yes"}, "logger.log_model='yes' must be"),
    ({"init_timeout": -5}, "logger.init_timeout=-5 must be"),
    ({"tags": "a,b"}, "logger.tags='a,b' must be a list of strings"),
    ({"project": ""}, "logger.project='' must be"),
])
def test_a_bad_wandb_setting_names_its_key(kwargs, message):
    with pytest.raises(ValueError) as err:
        WandbTracker(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_null_tracker_checks_its_one_setting():
    with pytest.raises(ValueError, match="logger.stats_every=2.5 must be"):
        NullTracker(stats_every=2.5)
    assert NullTracker(stats_every=7).stats_every == 7


def test_the_tracker_takes_the_checked_values():
    tracker = WandbTracker(tags=("x", 3), log_every=0, init_timeout=2)
    assert tracker.tags == ["x", "3"] and tracker.log_every == 1
    assert tracker.init_timeout == 2.0 and isinstance(tracker.init_timeout, float)
    assert set(WandbSettings.names()) == {
        "mode", "project", "entity", "group", "tags", "name", "dir", "stats_every",
        "timing_every", "log_every", "log_model", "sweep_id", "init_timeout", "finish_timeout",
        "heatmap_cap", "async_log"}

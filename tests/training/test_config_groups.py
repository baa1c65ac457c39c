"""The Hydra groups mirror the optimizer's typed parameter groups (``hparams.py``): each key a
group file sets is a parameter of the group it stands for, every parameter is set by exactly
one place, and the files of one group set the same keys."""

import glob
import os

import yaml

from nested_research import NestedLearningOptimizer
from nested_research.optimizers.nested.compression import CompressionParams
from nested_research.optimizers.nested.intervals import IntervalParams
from nested_research.optimizers.nested.memory import MemoryParams
from nested_research.optimizers.nested.optimizer import MomentParams, StateParams

from repo import CONF

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


def test_each_group_file_sets_exactly_its_parameters():
    for group, params in GROUPS.items():
        files = _files(group)
        assert files, group
        for name, keys in files.items():
            assert keys == params, (group, name, keys ^ params)


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

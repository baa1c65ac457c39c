"""What every member of the optimizer family shares (``family.FamilyOptimizer``), checked once
for each: the family is every ``conf/optimizer/*.yaml`` whose target is a family optimizer, so
a new member is covered by adding its module and its conf file."""

import glob
import importlib
import inspect
import os

import numpy as np
import pytest
import yaml

from nested_research.family import FamilyOptimizer

CONF = os.path.join(os.path.dirname(__file__), "..", "conf", "optimizer")


def _family():
    out = {}
    for path in sorted(glob.glob(os.path.join(CONF, "*.yaml"))):
        with open(path) as fh:
            conf = yaml.safe_load(fh)
        module, _, name = conf["params"]["_target_"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if isinstance(cls, type) and issubclass(cls, FamilyOptimizer):
            out[conf["name"]] = (cls, conf)
    return out


FAMILY = _family()
OWN_PARAMS = {k: v for k, v in FAMILY.items() if not v[1]["uses_memory_groups"]}


def _norm(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def test_the_family_is_found():
    assert {"nested", "ademamix", "m3", "delta_momentum"} <= set(FAMILY)


@pytest.mark.parametrize("name", sorted(OWN_PARAMS))
def test_the_conf_file_sets_every_parameter_at_its_default(name):
    cls, conf = OWN_PARAMS[name]
    params = {k: v for k, v in conf["params"].items() if k != "_target_"}
    signature = inspect.signature(cls).parameters
    own = set(signature) - {"learning_rate", "name", "kwargs"}
    assert own <= set(params), own - set(params)            # every parameter is in the file
    assert set(params) - own <= {"weight_decay", "clipnorm"}  # (Keras' own keywords)
    assert conf["learning_rate"] == signature["learning_rate"].default
    opt = cls(**params)
    for key in own:
        assert _norm(params[key]) == _norm(signature[key].default), key
        assert _norm(getattr(opt, key)) == _norm(params[key]), key


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_skip_nonfinite_leaves_every_variable_untouched(name):
    import keras

    cls, _ = FAMILY[name]
    rng = np.random.default_rng(0)
    shapes = [(6, 4), (3, 3, 2, 5), (4,)]
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}")
                 for i, s in enumerate(shapes)]
    opt = cls(learning_rate=1e-3, skip_nonfinite=True)
    grads = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(3)]
    opt.apply(grads[0], variables)
    watched = variables + [v for v in opt.variables if not v.path.endswith("skipped_steps")]
    before = [np.asarray(v).copy() for v in watched]
    for bad in (np.nan, np.inf):
        poisoned = [g.copy() for g in grads[1]]
        poisoned[1].flat[3] = bad
        opt.apply(poisoned, variables)
        for b, v in zip(before, watched):
            np.testing.assert_array_equal(b, np.asarray(v), err_msg=v.path)
    assert opt.skipped_steps == 2 and int(opt.iterations) == 1
    opt.apply(grads[2], variables)
    assert int(opt.iterations) == 2
    assert all(np.isfinite(np.asarray(v)).all() for v in watched)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_skip_nonfinite_must_be_a_bool(name):
    cls, _ = FAMILY[name]
    with pytest.raises(ValueError, match=r"skip_nonfinite=1 must be True or False"):
        cls(skip_nonfinite=1)
    assert cls().get_config()["skip_nonfinite"] is False

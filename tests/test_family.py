"""What every member of the optimizer family shares (``family.FamilyOptimizer``), checked once
for each: the family is every ``conf/optimizer/*.yaml`` whose target is a family optimizer, so
a new member is covered by adding its module and its conf file."""

import glob
import importlib
import inspect
import json
import os
import shutil

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


# ------------------------------------------------ through the trainer: XLA, checkpoint, resume
# The members (``uses_memory_groups: false``: the nested optimizer's trainer runs are
# test_resume.py's and test_train.py's), and Keras' Muon, which is not a FamilyOptimizer.
TRAINED = sorted(set(OWN_PARAMS) | {"muon"})
STEPS, CUT = 5, 3
#: Tiny in-process jobs (tests/inprocess.py): the digits MLP, 5 steps of 64 examples, under the
#: cosine schedule (warmup over steps 0-1, then the cosine, whose value depends on
#: ``total_steps``): the resumed steps 3-4 take their rate from the restored ``iterations``.
#: A checkpoint every CUT steps: step 3 (the cut) and the final one.
TRAIN = ["model.hidden_units=[32]", "logger=none", "trainer.verbose=0", "trainer.epochs=1", "trainer.batch_size=72",
         f"trainer.max_steps={STEPS}", f"trainer.checkpoint_every={CUT}",
         "lr_schedule=cosine", "lr_schedule.warmup_steps=2"]
#: M3 writes its slow momentum every ``frequency`` steps (10): 2, so that it is written on both
#: sides of the cut (steps 2 and 4) and restored in between.
EXTRA = {"m3": ["optimizer.params.frequency=2"]}
_RUNS: dict = {}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, digits_prepared):
    return tmp_path_factory.mktemp("family_runs")


def _trained(name, mode, base, monkeypatch):
    """The run of ``name`` (once per module): ``graph`` (tf.function), ``xla``
    (``trainer.jit_compile=true``), or ``resumed``: ``graph``'s run directory as a run killed
    right after its step-3 checkpoint leaves it (results, model and final checkpoint removed:
    test_resume.py checks that a SIGKILLed run leaves exactly its checkpoints), resumed with
    ``trainer.resume``.  Returns its directory, results, initial weights and whether the
    model's training step was compiled by XLA."""
    from hydra import compose, initialize_config_dir

    from nested_research import trainer
    from nested_research.checkpoint import list_checkpoints
    from nested_research.train import run

    key = (name, mode)
    if key in _RUNS:
        return _RUNS[key]
    overrides = [*TRAIN, f"optimizer={name}", *EXTRA.get(name, [])]
    out = base / f"{name}-{mode}"
    if mode == "xla":
        overrides.append("trainer.jit_compile=true")
    if mode == "resumed":
        graph = _trained(name, "graph", base, monkeypatch)
        shutil.copytree(graph["dir"], out)
        (out / "results.json").unlink()
        (out / "model.keras").unlink()
        shutil.rmtree(dict(list_checkpoints(str(out)))[STEPS])
        assert [s for s, _ in list_checkpoints(str(out))] == [CUT]
        overrides.append(f"trainer.resume={out}")
    seen = {}
    real_fit = trainer.fit

    def fit(model, optimizer, data, **kwargs):
        seen["w0"] = [np.asarray(v).copy() for v in model.variables]
        try:
            return real_fit(model, optimizer, data, **kwargs)
        finally:
            seen["jit"] = model.jit_compile

    with initialize_config_dir(os.path.abspath(os.path.join(CONF, "..")), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    import keras

    # job.run seeds Keras, but the initializers draw from the session's seed generator, which
    # only a new session starts again (as conftest does before every test)
    keras.backend.clear_session(free_memory=False)
    with monkeypatch.context() as m:
        m.setattr(trainer, "fit", fit)  # (job.run imports it when it runs)
        run(cfg, str(out))
    with open(out / "results.json") as fh:
        results = json.load(fh)
    _RUNS[key] = {"dir": out, "results": results, **seen}
    return _RUNS[key]


def _final(run_dir):
    from nested_research.checkpoint import latest

    ck = latest(str(run_dir))
    assert ck.step == STEPS and ck.meta["iterations"] == STEPS
    return ck.arrays(), [s["path"] for s in ck.meta["variables"]["optimizer"]]


@pytest.mark.parametrize("name", TRAINED)
def test_xla_run_through_the_trainer_equals_the_graph_run(name, runs_dir, monkeypatch):
    """``trainer.jit_compile=true``: the whole training step (optimizer included) compiled by
    XLA trains, with finite losses, to the graph-mode run's weights and optimizer state.

    Tolerance: XLA fuses and reorders float32 sums (relative differences of ~1e-7 per op),
    which a few steps of normalised updates and Newton-Schulz iterations grow to ~1e-6 of
    the values they produce; so each variable must agree to 1e-5 of what the 5 steps made of
    it (its change from the initial weights; an optimizer slot starts at zero) and to 1e-5
    relative.  A wrong update (a step off, a rate or a slot mixed up) is >= 1e-2 of that."""
    graph = _trained(name, "graph", runs_dir, monkeypatch)
    xla = _trained(name, "xla", runs_dir, monkeypatch)
    assert xla["jit"] is True and graph["jit"] is False
    for r in (graph, xla):
        assert r["results"]["steps"] == STEPS
        assert np.isfinite(list(r["results"]["metrics"].values())).all(), r["results"]["metrics"]
    (g, paths), (x, _) = _final(graph["dir"]), _final(xla["dir"])
    w0 = graph["w0"]
    for a, b in zip(graph["w0"], xla["w0"]):
        np.testing.assert_array_equal(a, b)  # the same initial weights
    assert len(g["model"]) == len(x["model"]) == len(w0) > 0
    assert len(g["optimizer"]) == len(x["optimizer"]) > len(w0)
    changed = 0
    for i, (a, b, start) in enumerate(zip(g["model"], x["model"], w0)):
        scale = np.abs(a - start).max()
        changed += scale > 0
        np.testing.assert_allclose(b, a, rtol=2e-6, atol=1e-5 * scale, err_msg=f"weight {i}")
    assert changed == len(w0)  # every weight trained
    for a, b, path in zip(g["optimizer"], x["optimizer"], paths):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max(), err_msg=path)


@pytest.mark.parametrize("name", TRAINED)
def test_resumed_run_equals_the_uninterrupted_run(name, runs_dir, monkeypatch):
    """Killed after the step-3 checkpoint and resumed (``trainer.resume``): the final weights
    and every optimizer variable (``optimizer.variables``: slots, iterations, the schedule's
    step) are bitwise those of the uninterrupted run, and so are the losses."""
    graph = _trained(name, "graph", runs_dir, monkeypatch)
    resumed = _trained(name, "resumed", runs_dir, monkeypatch)
    assert resumed["results"]["steps"] == STEPS
    (g, paths), (r, _) = _final(graph["dir"]), _final(resumed["dir"])
    assert len(g["model"]) == len(r["model"]) > 0
    assert len(g["optimizer"]) == len(r["optimizer"]) > len(g["model"])
    for group in ("model", "optimizer"):
        for i, (a, b) in enumerate(zip(g[group], r[group])):
            np.testing.assert_array_equal(b, a, err_msg=f"{group} {i}: {paths[i]}"
                                          if group == "optimizer" else f"{group} {i}")
    assert resumed["results"]["metrics"] == graph["results"]["metrics"]

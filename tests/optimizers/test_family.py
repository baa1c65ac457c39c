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

from nested_research.optimizers.family import FamilyOptimizer
from nested_research.training.config_groups import OPTIMIZER_GROUPS

from repo import CONF as _CONF

CONF = str(_CONF / "optimizer")


def _family_confs():
    out = {}
    for path in sorted(glob.glob(os.path.join(CONF, "*.yaml"))):
        with open(path) as fh:
            conf = yaml.safe_load(fh)
        module, _, name = conf["params"]["_target_"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if isinstance(cls, type) and issubclass(cls, FamilyOptimizer):
            out[conf["name"]] = (cls, conf)
    return out


#: Every conf file of a family member; ``FAMILY``: one per class (the first by name), for the
#: tests of the class itself.
CONFS = _family_confs()
FAMILY = {}
for _name, (_cls, _conf) in CONFS.items():
    if all(_cls is not c for c, _ in FAMILY.values()):
        FAMILY[_name] = (_cls, _conf)


def _brings_groups(conf) -> bool:
    """The conf file's defaults list brings the nested optimizer's groups (memory, ...):
    its parameters come from them, not from the file."""
    return any(isinstance(d, dict) and k.lstrip("/").split("@")[0] in OPTIMIZER_GROUPS
               for d in conf.get("defaults") or [] for k in d)


OWN_PARAMS = {k: v for k, v in CONFS.items() if not _brings_groups(v[1])}


def _norm(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def test_the_family_is_found():
    assert {"nested", "ademamix", "m3", "delta_momentum"} <= set(FAMILY)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_members_are_what_the_protocols_declare(name):
    """Every member names its state (``protocols.StatefulOptimizer``), unbuilt too; the depth
    schedule, the in-step statistics and the old state layout are the nested optimizer's; a
    Keras optimizer is a member of none."""
    import keras

    from nested_research.optimizers import (ConvertsSavedState, DepthScheduled,
                                            NestedLearningOptimizer, RecordsStats,
                                            StatefulOptimizer)

    cls, conf = FAMILY[name]
    opt = cls(**{k: v for k, v in conf["params"].items() if k != "_target_"})
    nested = isinstance(opt, NestedLearningOptimizer)
    assert isinstance(opt, StatefulOptimizer) and set(cls.STATE_ROLES)
    for protocol in (DepthScheduled, RecordsStats, ConvertsSavedState):
        assert isinstance(opt, protocol) == nested, protocol
    opt.build([keras.Variable(np.ones((3, 2), "float32"))])
    assert set(opt.slots(0)) & set(cls.STATE_ROLES)  # (the nested one: memory on or off)
    adam = keras.optimizers.Adam()
    for protocol in (StatefulOptimizer, DepthScheduled, RecordsStats, ConvertsSavedState):
        assert not isinstance(adam, protocol)


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
def test_row_sparse_gradients_equal_their_dense_form(name):
    """An Embedding's ``IndexedSlices`` gradient (in a traced step, as ``fit`` gives it) moves
    every variable and slot as the same gradient in dense form does."""
    import keras
    import tensorflow as tf

    cls, _ = FAMILY[name]
    rng = np.random.default_rng(1)
    init = rng.normal(size=(12, 4)).astype("float32")
    rows = [rng.normal(size=(3, 4)).astype("float32") for _ in range(4)]
    index = [np.array([1, 7, 1]), np.array([0, 11, 5]), np.array([3, 3, 3]),
             np.array([2, 9, 10])]
    finals = []
    for form in ("sparse", "dense"):
        var = keras.Variable(init, name="table")
        opt = cls(learning_rate=1e-2)

        @tf.function
        def step(values, idx):
            g = tf.IndexedSlices(values, idx, tf.constant([12, 4]))
            opt.apply([g if form == "sparse" else tf.convert_to_tensor(g)], [var])

        for values, idx in zip(rows, index):
            step(tf.constant(values), tf.constant(idx))
        finals.append([np.asarray(var)] + [np.asarray(v) for v in opt.variables])
    assert not np.allclose(finals[0][0], init)
    for a, b in zip(*finals):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_skip_nonfinite_must_be_a_bool(name):
    cls, _ = FAMILY[name]
    with pytest.raises(ValueError, match=r"skip_nonfinite=1 must be True or False"):
        cls(skip_nonfinite=1)
    assert cls().get_config()["skip_nonfinite"] is False


# ------------------------------------------------ through the trainer: XLA, checkpoint, resume
#: The family optimizers with their own parameters (the nested optimizer's
#: trainer runs are test_resume.py's and test_train.py's) and Keras' Muon (conf/optimizer/
#: muon.yaml), which is not a FamilyOptimizer.
TRAINED = sorted({k for k, v in FAMILY.items() if not _brings_groups(v[1])} | {"muon"})
STEPS, CUT, WARMUP = 5, 3, 2
#: Tiny in-process jobs (as tests/inprocess.py's, without Hydra's command line): the digits MLP
#: with one hidden layer (a Muon/M3 kernel, the ``logits`` kernel and two biases), 5 steps of 72
#: examples (72 divides the validation and test splits: no second trace for a short batch),
#: under the cosine schedule: warmup over steps 0-1, then a cosine whose value depends on
#: ``total_steps`` (= max_steps) and reaches 0 after the last step.  A checkpoint every CUT
#: steps: step 3 (where the resumed run starts, in the cosine) and the final one.
TRAIN = ["model.hidden_units=[32]", "logger=none", "trainer.verbose=0", "trainer.epochs=1",
         "trainer.batch_size=72", f"trainer.max_steps={STEPS}", f"trainer.checkpoint_every={CUT}",
         "lr_schedule=cosine", f"lr_schedule.warmup_steps={WARMUP}"]
#: M3 writes its slow momentum every ``frequency`` steps (10): 2, so that it is written on both
#: sides of the cut (steps 2 and 4) and restored in between.
EXTRA = {"m3": ["optimizer.params.frequency=2"]}
_RUNS: dict = {}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, digits_prepared):
    # (prepared first: job.run seeds Keras before it loads the data, and preparing the dataset
    # draws from Python's RNG, from which Keras' initializers take their seed: the run that
    # prepares it starts from other weights than the same run later)
    return tmp_path_factory.mktemp("family_runs")


def _trained(name, mode, base, monkeypatch):
    """The run of ``name`` (once per module): ``graph`` (tf.function), ``xla``
    (``trainer.jit_compile=true``), or ``resumed``: ``graph``'s run directory as a run killed
    right after its step-3 checkpoint leaves it (results, model and newer checkpoint removed;
    test_resume.py checks that a SIGKILLed run leaves just that), resumed with
    ``trainer.resume``.  Returns its directory and results, and what ``trainer.fit`` saw: the
    initial weights, the step it resumed from, the batches it trained, whether Keras compiled
    the training step with XLA, and the optimizer's learning rate at the end."""
    import keras
    from hydra import compose, initialize_config_dir

    from nested_research.training import fit as trainer
    from nested_research.training.checkpoint_files import list_checkpoints
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
    with initialize_config_dir(os.path.abspath(os.path.join(CONF, "..")), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    seen = {"batches": 0}
    real_fit = trainer.fit

    def fit(model, optimizer, data, **kwargs):
        seen["w0"] = [np.asarray(v).copy() for v in model.variables]
        checkpoint = kwargs.get("checkpoint")
        seen["resumed_from"] = checkpoint.step if checkpoint is not None else None
        count = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda *_, **__: seen.update(batches=seen["batches"] + 1))
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), count]
        result = real_fit(model, optimizer, data, **kwargs)
        seen["jit"] = model.jit_compile
        seen["lr"] = float(optimizer.learning_rate)
        return result

    with monkeypatch.context() as m:
        m.setattr(trainer, "fit", fit)  # (job.run imports it when it runs)
        run(cfg, str(out))
    with open(out / "results.json") as fh:
        results = json.load(fh)
    _RUNS[key] = {"dir": out, "results": results, **seen}
    return _RUNS[key]


def _final(run_dir):
    """The final checkpoint's arrays by group, and the optimizer variables' paths."""
    from nested_research.training.checkpoint_files import latest

    ck = latest(str(run_dir))
    assert ck.step == STEPS and ck.meta["iterations"] == STEPS
    return ck.arrays(), [s["path"] for s in ck.meta["variables"]["optimizer"]]


def _trained_as_told(r, batches=STEPS):
    assert r["results"]["steps"] == STEPS and r["batches"] == batches
    assert np.isfinite(list(r["results"]["metrics"].values())).all(), r["results"]["metrics"]
    # the optimizer's rate is the schedule's at its step: the cosine's end, 0 (a constant or
    # a schedule not restored with ``iterations``: lr0, or a positive rate)
    assert r["lr"] == 0.0


@pytest.mark.parametrize("name", TRAINED)
def test_xla_run_through_the_trainer_equals_the_graph_run(name, runs_dir, monkeypatch):
    """``trainer.jit_compile=true``: the training step, optimizer included, compiled by XLA
    trains (finite losses) to the graph-mode run's weights and optimizer variables.

    Tolerance: XLA fuses and reorders float32 arithmetic.  Measured: every slot within 5e-7
    of its largest value (2.3e-6 for M3's orthogonalised slow momentum), every weight within
    6 float32 ulps (each step rounds ``w + update``) plus 6e-7 of its largest change over
    the 5 steps.  Asserted: slots to 1e-5 relative and 1e-5 of their largest value; weights
    to 2e-6 relative (17 ulps) and 1e-5 of their largest change.  A rate off by 1e-3 fails."""
    graph = _trained(name, "graph", runs_dir, monkeypatch)
    xla = _trained(name, "xla", runs_dir, monkeypatch)
    assert xla["jit"] is True and graph["jit"] is False
    _trained_as_told(graph)
    _trained_as_told(xla)
    (g, paths), (x, _) = _final(graph["dir"]), _final(xla["dir"])
    w0 = graph["w0"]
    for a, b in zip(w0, xla["w0"]):
        np.testing.assert_array_equal(a, b)  # the same initial weights
    assert len(g["model"]) == len(x["model"]) == len(w0) > 0
    assert len(g["optimizer"]) == len(x["optimizer"]) > len(w0)
    for i, (a, b, start) in enumerate(zip(g["model"], x["model"], w0)):
        change = np.abs(a - start).max()
        assert change > 0, f"weight {i} did not train"
        np.testing.assert_allclose(b, a, rtol=2e-6, atol=1e-5 * change, err_msg=f"weight {i}")
    for a, b, path in zip(g["optimizer"], x["optimizer"], paths):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max(), err_msg=path)


@pytest.mark.parametrize("name", TRAINED)
def test_resumed_run_equals_the_uninterrupted_run(name, runs_dir, monkeypatch):
    """Killed after the step-3 checkpoint and resumed (``trainer.resume``), the run trains
    steps 4-5 only and ends with the uninterrupted run's weights and optimizer variables
    (``optimizer.variables``: every slot, ``iterations``), bitwise, and its metrics."""
    graph = _trained(name, "graph", runs_dir, monkeypatch)
    resumed = _trained(name, "resumed", runs_dir, monkeypatch)
    assert graph["resumed_from"] is None and resumed["resumed_from"] == CUT
    _trained_as_told(graph)
    _trained_as_told(resumed, batches=STEPS - CUT)
    (g, paths), (r, _) = _final(graph["dir"]), _final(resumed["dir"])
    assert len(g["model"]) == len(r["model"]) > 0
    assert len(g["optimizer"]) == len(r["optimizer"]) > len(g["model"])
    for i, (a, b) in enumerate(zip(g["model"], r["model"])):
        np.testing.assert_array_equal(b, a, err_msg=f"weight {i}")
    for a, b, path in zip(g["optimizer"], r["optimizer"], paths):
        np.testing.assert_array_equal(b, a, err_msg=path)
    assert resumed["results"]["metrics"] == graph["results"]["metrics"]


def test_a_run_records_the_run_length_parameters_it_was_built_with(runs_dir, monkeypatch):
    """AdEMAMix's warm-ups are the run's length (``optimizer.run_length_params``): the run's
    results (and W&B config) say so, not the file's ``null``."""
    params = _trained("ademamix", "graph", runs_dir, monkeypatch)["results"]["config"][
        "optimizer"]["params"]
    assert params["alpha_warmup_steps"] == params["beta_3_warmup_steps"] == STEPS

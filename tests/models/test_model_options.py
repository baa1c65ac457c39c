"""The model options ``model=cms_transformer`` and ``model=hope``: built from their configs at
about the Transformer's size, causal end to end, trainable, saved and loaded as plain ``.keras``
files, and refusing bad CMS settings with the key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import nested_research  # noqa: F401  (registers the layers)
from nested_research.models import MODEL_BUILDERS, build_cms_transformer, build_hope

from repo import CONF, ROOT

L, V = 12, 16
INPUTS = {"input_shape": (L,), "num_classes": V, "vocab_size": V}
NEW = ["cms_transformer", "hope"]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(7)
    yield


def _from_conf(option: str, **inputs):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={option}"])
    return instantiate(cfg.model, **{**INPUTS, **inputs}, _convert_="all")


def _tokens(seed, batch=3, length=L):
    return np.random.default_rng(seed).integers(0, V, size=(batch, length)).astype("int32")


def test_registry_has_the_new_models():
    assert MODEL_BUILDERS["cms_transformer"] is build_cms_transformer
    assert MODEL_BUILDERS["hope"] is build_hope


@pytest.mark.parametrize("option", NEW)
def test_builds_from_its_conf_at_the_transformers_size(option):
    model = _from_conf(option, output_positions=4)
    reference = _from_conf("transformer", output_positions=4)
    assert model.output_shape == (None, 4, V)
    assert abs(model.count_params() / reference.count_params() - 1) < 0.05
    weighted = [layer for layer in model.layers if layer.trainable_weights]
    assert len(weighted) >= 6  # depths for the nested optimizer's schedule
    from nested_research.optimizers.nested.depths import compute_depths

    depths = compute_depths(model)
    assert len(set(depths.values())) >= 6 and min(depths.values()) == 0


def _causal_models():
    rates = dict(inner_learning_rates=(0.05, 0.02))
    return {
        "cms_transformer": build_cms_transformer(**INPUTS, d_model=16, num_heads=2, **rates),
        "hope_chunked": build_hope(**INPUTS, d_model=16, num_heads=2, memory_chunk_size=4,
                                   **rates),
        "hope_recurrent": build_hope(**INPUTS, d_model=16, num_heads=2, memory_chunk_size=None,
                                     **rates),
    }


def test_every_output_depends_only_on_earlier_tokens():
    x = _tokens(0)
    for name, model in _causal_models().items():
        base = keras.ops.convert_to_numpy(model(x))
        for t in range(L - 1):
            changed = x.copy()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1 + t) % V
            out = keras.ops.convert_to_numpy(model(changed))
            np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-5,
                                       err_msg=f"{name}: position {t}")
            assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-4, (name, t)


def test_hope_memory_forms_agree_in_the_model():
    models = _causal_models()
    chunked, recurrent = models["hope_chunked"], models["hope_recurrent"]
    recurrent.set_weights(chunked.get_weights())
    x = _tokens(1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(recurrent(x)),
                               keras.ops.convert_to_numpy(chunked(x)), atol=1e-5)


@pytest.mark.parametrize("option", NEW)
def test_trains_a_few_steps_with_fit(option):
    model = _from_conf(option, output_positions=4)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = _tokens(2, batch=32)
    y = x[:, -4:]  # copy the last four tokens
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]


def test_keras_files_load_with_plain_load_model(tmp_path):
    """Saved ``.keras`` files load in a fresh process that only imports ``nested_research``."""
    x = _tokens(3)
    for option in NEW:
        model = _from_conf(option)
        model.save(tmp_path / f"{option}.keras")
        np.save(tmp_path / f"{option}.npy", keras.ops.convert_to_numpy(model(x)))
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, keras, nested_research\n"
        "d = sys.argv[1]\n"
        "x = np.load(d + '/x.npy')\n"
        f"for option in {NEW!r}:\n"
        "    model = keras.saving.load_model(f'{d}/{option}.keras')\n"
        "    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)),\n"
        "                               np.load(f'{d}/{option}.npy'), atol=1e-6)\n"
        "print('loaded')\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]


_BAD = [
    ("chunk_sizes", [0, 8], "must be a list of 2 entries (one per level), each an integer"),
    ("chunk_sizes", [2.5, 8], "or null"),
    ("chunk_sizes", [2], "must be a list of 2 entries"),
    ("chunk_sizes", 4, "must be a list of 2 entries"),
    ("chunk_sizes", [2, 13], "must be null or at most the sequence length L=12"),
    ("inner_learning_rates", [1e-3], "must be a list of 2 entries"),
    ("inner_learning_rates", [1e-3, -1.0], "each a number >= 0"),
    ("hidden_units", [64, 0], "must be a list of integers >= 1"),
    ("activation", "softmax", "must be one of"),
    ("d_model", 30, "must be divisible by num_heads=4"),
    ("num_layers", 0, "must be"),
]


@pytest.mark.parametrize("option", NEW)
@pytest.mark.parametrize("param,value,allowed", _BAD)
def test_bad_settings_name_the_key_the_value_and_what_is_allowed(option, param, value,
                                                                 allowed):
    with pytest.raises(ValueError) as excinfo:
        MODEL_BUILDERS[option](**INPUTS, **{param: value})
    message = str(excinfo.value)
    assert message.startswith(f"{param}={value!r} must be ") and allowed in message, message


@pytest.mark.parametrize("value", [0, 2.5, "4"])
def test_bad_memory_chunk_size(value):
    with pytest.raises(ValueError, match=r"^memory_chunk_size=.* must be an integer >= 1 or None"):
        build_hope(**INPUTS, memory_chunk_size=value)


def test_null_chunk_sizes_and_any_memory_chunk_are_allowed():
    model = build_hope(**INPUTS, chunk_sizes=[None, 12], memory_chunk_size=64)
    assert model.output_shape == (None, L, V)


TINY_RECALL = ["experiment=recall_transformer", "data.builder_kwargs.config.num_train=256",
               "data.builder_kwargs.config.num_test=64", "logger=none", "trainer.epochs=1",
               "trainer.verbose=0"]


@pytest.mark.parametrize("option,optimizer", [("cms_transformer", "adam"), ("hope", "nested")])
def test_the_trainer_runs_it(option, optimizer, tmp_path, data_dir, monkeypatch):
    """A job through ``python -m nested_research.train`` (in process): with a baseline, and
    with the nested optimizer's depth schedule read from the model graph."""
    import json

    from inprocess import main_in_process

    run_dir = tmp_path / "run"
    main_in_process(monkeypatch, *TINY_RECALL, f"model={option}",
                    f"optimizer={optimizer}", "trainer.max_steps=3", f"hydra.run.dir={run_dir}")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 3 and np.isfinite(results["metrics"]["train/loss"])
    assert (run_dir / "model.keras").is_file()


@pytest.mark.parametrize("override,message", [
    ("model.chunk_sizes=[0,8]", "model.chunk_sizes=[0, 8] must be a list of 2 entries (one per "
     "level), each an integer >= 1 or null (levels: hidden_units=[64, 64])"),
    ("model.chunk_sizes=[2,16]", "model.chunk_sizes=[2, 16] must be null or at most the "
     "sequence length L=12 each"),
    ("model.inner_learning_rates=[0.001]", "model.inner_learning_rates=[0.001] must be a list "
     "of 2 entries"),
])
def test_a_bad_setting_stops_the_job_with_one_line(override, message, tmp_path, data_dir,
                                                   monkeypatch, capsys):
    from inprocess import cli_in_process

    run_dir = tmp_path / "run"
    done = cli_in_process(monkeypatch, capsys, *TINY_RECALL, "model=hope", override,
                          "trainer.max_steps=2", f"hydra.run.dir={run_dir}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (run_dir / "results.json").exists()


def test_models_benchmark_runs_small(tmp_path):
    """``python -m nested_research.bench.models`` end to end at toy sizes (one process)."""
    from nested_research.bench import models as bench

    out = bench.main(["--modes", "graph", "--seq-len", "8", "--batch", "2", "--vocab", "16",
                      "--memory-length", "8", "--memory-batch", "1", "--chunks", "4",
                      "--steps", "1", "--repeats", "1", "--json", str(tmp_path / "b.json")])
    assert set(out["train"]["graph"]) == {"transformer", "cms_transformer", "hope"}
    assert set(out["memory"]["graph"]) == {"recurrent", "chunked C=4"}
    assert (tmp_path / "b.json").is_file()

"""The byte-level language-model workload: the ``python_stdlib_text`` builder, its loader path
and ``experiment=lm_transformer``'s bits per byte.

The builder tests use a tiny config (16-byte windows of the first 20,000 corpus bytes); the
corpus is checked against an independent re-read of the stdlib files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import sys
import sysconfig

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hydra import compose, initialize_config_dir

from nested_research.training import preflight
from nested_research.data import load_splits, make_pystdlib_config, pystdlib
from nested_research.core.errors import ConfigError

from inprocess import cli_in_process, main_in_process

from repo import CONF
TINY = dict(seq_len=16, max_bytes=20_000, test_fraction=0.1)
TINY_OVERRIDES = [f"data.builder_kwargs.config.{k}={v}" for k, v in TINY.items()]


def reread_corpus(max_bytes: int) -> bytes:
    """The documented corpus, read here without the module's helpers."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__",
            "encodings", "pydoc_data"}
    paths = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        dirs = rel.parts[:-1]
        if any(d in skip or d.startswith("config-") for d in dirs):
            continue
        if rel.name.startswith("_sysconfigdata") or path.is_symlink() or \
                any((root / pathlib.Path(*dirs[:i + 1])).is_symlink() for i in range(len(dirs))):
            continue
        paths.append(rel.as_posix())
    return b"".join((root / p).read_bytes() + b"\x00" for p in sorted(paths))[:max_bytes]


def split_arrays(builder, split: str) -> dict:
    rows = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def prepare(data_dir, **params):
    builder = tfds.builder("python_stdlib_text", data_dir=os.fspath(data_dir),
                           config=make_pystdlib_config(**params))
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def lm_data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("lm_data"))


@pytest.fixture(scope="module")
def tiny(lm_data_dir):
    return prepare(lm_data_dir, **TINY)


@pytest.fixture(scope="module")
def tiny_arrays(tiny):
    return {split: split_arrays(tiny, split) for split in ("train", "test")}


def test_corpus_is_the_sorted_stdlib_files():
    corpus, files = pystdlib.read_corpus(TINY["max_bytes"])
    assert corpus == reread_corpus(TINY["max_bytes"]) and len(corpus) == TINY["max_bytes"]
    assert corpus.count(b"\x00") in (files - 1, files)  # the last file may be cut
    listed = pystdlib.stdlib_files()
    whole = reread_corpus(10**12)
    assert whole.count(b"\x00") == len(listed)  # the separator: only between files
    assert listed == sorted(listed) and "os.py" in listed and "__future__.py" == listed[0]
    assert not any(p.startswith(("test/", "idlelib/", "site-packages/", "encodings/"))
                   for p in listed)


def test_stored_windows_are_the_corpus(tiny, tiny_arrays):
    """Train then test windows, in order, are the corpus bytes at their documented offsets."""
    length, corpus = TINY["seq_len"], reread_corpus(TINY["max_bytes"])
    data = np.frombuffer(corpus, np.uint8)
    cut = len(data) - round(TINY["test_fraction"] * len(data))
    for split, start in (("train", 0), ("test", cut)):
        x, y = tiny_arrays[split]["x"], tiny_arrays[split]["y"]
        assert x.dtype == np.uint8 and x.shape[1] == y.shape[1] == length
        count = len(x)
        assert count == (((cut if split == "train" else len(data) - cut) - 1) // length)
        np.testing.assert_array_equal(x.reshape(-1), data[start:start + count * length])
        np.testing.assert_array_equal(y.reshape(-1), data[start + 1:start + count * length + 1])
    meta = tiny.info.metadata
    assert meta["corpus_sha256"] == hashlib.sha256(corpus).hexdigest()
    assert meta["corpus_bytes"] == len(corpus) and meta["vocab_size"] == 256


def test_targets_are_the_next_bytes(tiny_arrays):
    for split in ("train", "test"):
        x, y = tiny_arrays[split]["x"], tiny_arrays[split]["y"]
        np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
        np.testing.assert_array_equal(y[:-1, -1], x[1:, 0])  # windows follow one another


def test_train_and_test_do_not_overlap(tiny_arrays):
    """No corpus byte (input or target) of a train window is in a test window."""
    length = TINY["seq_len"]
    n = TINY["max_bytes"]
    cut = n - round(TINY["test_fraction"] * n)
    last_train_byte = len(tiny_arrays["train"]["x"]) * length  # the last window's last target
    assert last_train_byte < cut
    assert cut + len(tiny_arrays["test"]["x"]) * length <= n - 1


def test_deterministic(tiny, tiny_arrays, tmp_path):
    again = prepare(tmp_path, **TINY)
    assert again.info.metadata["corpus_sha256"] == tiny.info.metadata["corpus_sha256"]
    for split in ("train", "test"):
        for key, value in split_arrays(again, split).items():
            np.testing.assert_array_equal(value, tiny_arrays[split][key])


def test_version_carries_the_python_version(tiny, monkeypatch):
    v = sys.version_info
    version = f"{v.major}.{v.minor}.{v.micro}"
    name = make_pystdlib_config(**TINY).name
    assert name == f"{sys.implementation.name}{version}_L16_b20000_t0.1"
    assert f"{v.major}.{v.minor}" in tiny.info.full_name and version in tiny.info.metadata["python"]
    assert os.fspath(tiny.data_dir).endswith(os.path.join(name, "1.0.0"))
    assert make_pystdlib_config(**TINY) is make_pystdlib_config(**TINY)  # one object per name
    monkeypatch.setattr(pystdlib, "python_tag", lambda: "cpython3.99.0")
    other = make_pystdlib_config(**TINY)
    assert other.name == "cpython3.99.0_L16_b20000_t0.1" and other.name != name


def test_loader_gives_int32_next_byte_pairs(tiny, lm_data_dir):
    bundle = load_splits("python_stdlib_text", lm_data_dir, batch_size=8, seed=0,
                         val_fraction=0.1, builder_kwargs={"config": dict(TINY)})
    assert bundle.task == "language_model" and bundle.num_classes == 256
    assert bundle.input_shape == (16,) and bundle.metadata["target_shape"] == (16,)
    assert bundle.metadata["vocab_size"] == 256
    assert bundle.metadata["config_name"] == tiny.info.config_name
    x, y = next(iter(bundle.val))
    assert x.dtype.name == y.dtype.name == "int32"
    np.testing.assert_array_equal(y.numpy()[:, :-1], x.numpy()[:, 1:])


# ---------------------------------------------------------------- bad values
@pytest.mark.parametrize("params,needle", [
    ({"seq_len": 0}, "seq_len=0 must be an integer >= 1"),
    ({"seq_len": "64"}, "seq_len='64' must be an integer >= 1"),
    ({"seq_len": 2.5}, "seq_len=2.5 must be an integer"),
    ({"max_bytes": 100, "seq_len": 64}, "max_bytes=100 must be an integer >= 130"),
    ({"test_fraction": 0.0}, "test_fraction=0.0 must be a number in (0, 1)"),
    ({"test_fraction": 1}, "test_fraction=1 must be a number in (0, 1)"),
    ({"max_bytes": 1000, "seq_len": 64, "test_fraction": 0.01},
     "test_fraction=0.01 must leave at least one test window of seq_len + 1 = 65 bytes"),
    ({"bogus": 1}, "unknown python_stdlib_text config parameter(s) ['bogus']"),
])
def test_bad_config_values(params, needle):
    with pytest.raises(ValueError) as err:
        make_pystdlib_config(**params)
    assert needle in str(err.value)


@pytest.mark.parametrize("fraction,split", [(0.2, "test"), (0.5, "train")])
def test_corpus_too_small_for_a_window(fraction, split):
    """The bound holds for ``max_bytes``; a corpus shorter than it is checked when cut."""
    with pytest.raises(ValueError, match=rf"seq_len=64 must leave at least one {split} window"):
        pystdlib.split_windows(b"x" * 100, 64, fraction)


def test_preflight_names_the_bad_value(tmp_path, monkeypatch, capsys):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=lm_transformer", "logger=none",
                                           f"paths.data_dir={tmp_path / 'data'}",
                                           "data.builder_kwargs.config.seq_len=-3"])
    with pytest.raises(ConfigError, match=r"seq_len=-3 must be an integer >= 1"):
        preflight.preflight(cfg, str(tmp_path / "run"))
    monkeypatch.setenv("NESTED_RESEARCH_DATA_DIR", str(tmp_path / "data"))
    proc = cli_in_process(monkeypatch, capsys, "experiment=lm_transformer", "logger=none",
                          f"hydra.run.dir={tmp_path / 'run'}",
                          "data.builder_kwargs.config.test_fraction=1.5")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "test_fraction=1.5 must be a number in (0, 1)" in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


# ---------------------------------------------------------------- the job
def test_bits_per_byte_is_loss_over_ln2(tmp_path, data_dir, monkeypatch):
    """A tiny ``experiment=lm_transformer`` run: bits/byte = loss / ln 2 everywhere it is."""
    run_dir = tmp_path / "run"
    main_in_process(
        monkeypatch, "experiment=lm_transformer", "optimizer=adam", "logger=none",
        *TINY_OVERRIDES, "model.num_layers=1", "model.d_model=16", "model.ff_dim=16",
        "trainer.batch_size=256", "trainer.epochs=2", "trainer.verbose=0",
        "trainer.run_eagerly=true",
        "trainer.checkpoint_every=null", f"hydra.run.dir={run_dir}")
    results = json.loads((run_dir / "results.json").read_text())
    metrics, history = results["metrics"], results["history"]
    ln2 = math.log(2.0)
    for split in ("train", "val", "test"):
        assert metrics[f"{split}/bits_per_byte"] == pytest.approx(metrics[f"{split}/loss"] / ln2,
                                                                  rel=1e-12)
    assert metrics["val/best_bits_per_byte"] == pytest.approx(min(history["val/loss"]) / ln2)
    assert results["monitor"] == "val/bits_per_byte"
    assert results["monitor_value"] == metrics["val/bits_per_byte"]
    for split in ("train", "val"):
        assert len(history[f"{split}/bits_per_byte"]) == results["epochs"] == 2
        assert history[f"{split}/bits_per_byte"] == pytest.approx(
            [loss / ln2 for loss in history[f"{split}/loss"]], rel=1e-12)
    rows = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert [r["val/bits_per_byte"] for r in rows] == history["val/bits_per_byte"]
    assert 0 < metrics["val/bits_per_byte"] < 8.5 and results["steps"] > 0
    # Logits over the 256 byte values at every one of the 16 positions.
    model = keras.models.load_model(run_dir / "model.keras")
    assert tuple(model.output_shape) == (None, 16, 256)

"""Tests for the data layer (`nested_research.data`).

Everything runs offline on tmp data dirs: our three builders generate their
data locally; standard TFDS datasets are only exercised through
``tfds.testing.mock_data`` or through the "not prepared" error path.
"""

from __future__ import annotations

import os
import random
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from nested_research import data as nr_data
from nested_research.data import (EMBEDDED_DATASETS, AssociativeRecall, AssociativeRecallConfig,
                                  DataBundle, DatasetNotFoundError, Mnist1d, PythonStdlibText,
                                  SklearnDigits, load_splits, make_recall_config)

# A small MQAR config keeps the recall tests fast.
SMALL_RECALL = dict(vocab_size=16, num_pairs=4, num_queries=2, num_train=300, num_test=60, seed=3)


def small_recall_config() -> AssociativeRecallConfig:
    return make_recall_config(**SMALL_RECALL)


def prepare(name: str, data_dir, **builder_kwargs) -> tfds.core.DatasetBuilder:
    builder = tfds.builder(name, data_dir=os.fspath(data_dir), **builder_kwargs)
    builder.download_and_prepare()
    return builder


def split_arrays(builder: tfds.core.DatasetBuilder, split: str) -> dict:
    """All examples of ``split`` stacked into NumPy arrays, in stored order."""
    rows = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def tree_files(path) -> dict:
    """``{relative path: mtime_ns}`` for every file below ``path``."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, path)] = os.stat(full).st_mtime_ns
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data dir shared by the module; builders are prepared lazily into it."""
    return str(tmp_path_factory.mktemp("tfds_data"))


@pytest.fixture(scope="module")
def digits(data_dir):
    return prepare("sklearn_digits", data_dir)


@pytest.fixture(scope="module")
def mnist1d_builder(data_dir):
    return prepare("mnist1d", data_dir)


@pytest.fixture(scope="module")
def recall_small(data_dir):
    return prepare("associative_recall", data_dir, config=small_recall_config())


# --------------------------------------------------------------------------- #
# Package / registration
# --------------------------------------------------------------------------- #


def test_import_registers_our_builders():
    assert EMBEDDED_DATASETS == ("sklearn_digits", "mnist1d", "associative_recall",
                                 "python_stdlib_text")
    registered = set(tfds.list_builders(with_community_datasets=False))
    assert set(EMBEDDED_DATASETS) <= registered
    for name, cls in zip(EMBEDDED_DATASETS, (SklearnDigits, Mnist1d, AssociativeRecall,
                                             PythonStdlibText)):
        assert issubclass(cls, tfds.core.GeneratorBasedBuilder)
        assert cls.name == name
        assert str(cls.VERSION) == "1.0.0"
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert set(nr_data.__all__) >= {"load_splits", "DataBundle", "DatasetNotFoundError"}


# --------------------------------------------------------------------------- #
# sklearn_digits
# --------------------------------------------------------------------------- #


def test_digits_splits_shapes_dtypes(digits):
    info = digits.info
    assert info.splits["train"].num_examples == 1437
    assert info.splits["test"].num_examples == 360
    assert info.features["image"].shape == (8, 8, 1)
    assert info.features["label"].num_classes == 10
    for split, n in (("train", 1437), ("test", 360)):
        arrays = split_arrays(digits, split)
        assert arrays["image"].shape == (n, 8, 8, 1)
        assert arrays["image"].dtype == np.uint8
        assert arrays["image"].max() == 255 and arrays["image"].min() == 0
        assert set(np.unique(arrays["label"])) == set(range(10))


def test_digits_match_sklearn_stratified_split(digits):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        raw.images, raw.target, test_size=0.2, random_state=0, stratify=raw.target
    )
    for split, x, y in (("test", x_test, y_test), ("train", x_train, y_train)):
        arrays = split_arrays(digits, split)
        np.testing.assert_array_equal(arrays["label"], y)
        # Stored as round(pixel * 255 / 16); the mapping is exactly invertible.
        np.testing.assert_array_equal(arrays["image"][..., 0], np.rint(x * 255 / 16))
        restored = np.rint(arrays["image"][..., 0].astype(np.float64) * 16 / 255)
        np.testing.assert_array_equal(restored, x)
    # Stratified: per-class test counts within one of 20 % of the class size.
    counts = np.bincount(split_arrays(digits, "test")["label"], minlength=10)
    assert np.all(np.abs(counts - 0.2 * np.bincount(raw.target)) <= 1)


# --------------------------------------------------------------------------- #
# mnist1d
# --------------------------------------------------------------------------- #


def test_mnist1d_splits_and_generator_equality(mnist1d_builder):
    from mnist1d.data import get_dataset_args, make_dataset

    assert mnist1d_builder.info.splits["train"].num_examples == 4000
    assert mnist1d_builder.info.splits["test"].num_examples == 1000
    args = get_dataset_args()
    assert args.seed == 42
    np_state, py_state = np.random.get_state(), random.getstate()
    reference = make_dataset(args)  # seeds the global RNGs: restore them
    np.random.set_state(np_state)
    random.setstate(py_state)
    for split, xkey, ykey in (("train", "x", "y"), ("test", "x_test", "y_test")):
        arrays = split_arrays(mnist1d_builder, split)
        assert arrays["x"].dtype == np.float32 and arrays["x"].shape[1:] == (40,)
        assert set(np.unique(arrays["label"])) == set(range(10))
        np.testing.assert_array_equal(arrays["x"], reference[xkey].astype(np.float32))
        np.testing.assert_array_equal(arrays["label"], reference[ykey])


# --------------------------------------------------------------------------- #
# associative_recall
# --------------------------------------------------------------------------- #


def check_recall_examples(inputs: np.ndarray, targets: np.ndarray, cfg: dict) -> None:
    """Independent NumPy check of the documented MQAR token layout."""
    v, p, q = cfg["vocab_size"], cfg["num_pairs"], cfg["num_queries"]
    assert inputs.shape[1:] == (2 * p + q,) and targets.shape[1:] == (q,)
    assert inputs.dtype == np.int32 and targets.dtype == np.int32
    keys, values, queries = inputs[:, 0 : 2 * p : 2], inputs[:, 1 : 2 * p : 2], inputs[:, 2 * p :]
    assert keys.min() >= 0 and keys.max() < v // 2
    assert values.min() >= v // 2 and values.max() < v
    for row in range(len(inputs)):
        assert len(set(keys[row])) == p, "keys of one sequence must be distinct"
        assert len(set(queries[row])) == q, "queries must be distinct"
        pairs = dict(zip(keys[row].tolist(), values[row].tolist()))
        for j in range(q):
            assert targets[row, j] == pairs[int(queries[row, j])]


def test_recall_targets_are_the_paired_values(recall_small):
    assert recall_small.info.splits["train"].num_examples == SMALL_RECALL["num_train"]
    assert recall_small.info.splits["test"].num_examples == SMALL_RECALL["num_test"]
    for split in ("train", "test"):
        arrays = split_arrays(recall_small, split)
        check_recall_examples(arrays["inputs"], arrays["targets"], SMALL_RECALL)
    # Train and test come from different random streams.
    train, test = split_arrays(recall_small, "train"), split_arrays(recall_small, "test")
    assert not np.array_equal(train["inputs"][: len(test["inputs"])], test["inputs"])


def test_recall_default_config(tmp_path):
    builder = prepare("associative_recall", tmp_path)
    cfg = builder.builder_config
    assert cfg.name == "default"
    assert (cfg.vocab_size, cfg.num_pairs, cfg.num_queries) == (32, 4, 4)
    assert cfg.seq_len == 12
    assert builder.info.splits["train"].num_examples == 8000
    assert builder.info.splits["test"].num_examples == 1000
    arrays = split_arrays(builder, "test")
    check_recall_examples(arrays["inputs"], arrays["targets"], cfg.params())


def test_recall_config_validation_and_naming():
    cfg = small_recall_config()
    assert cfg.name == "v16_p4_q2_n300-60_s3"
    assert cfg.seq_len == 10
    assert make_recall_config(seed=4).name != make_recall_config(seed=5).name
    with pytest.raises(ValueError, match="num_pairs"):
        make_recall_config(vocab_size=8, num_pairs=5)
    with pytest.raises(ValueError, match="num_queries"):
        make_recall_config(num_pairs=2, num_queries=3)
    with pytest.raises(ValueError, match="num_train"):
        make_recall_config(num_train=0)
    with pytest.raises(ValueError, match="bogus"):
        make_recall_config(bogus=1)


# --------------------------------------------------------------------------- #
# Determinism and reuse of prepared data
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("fixture_name", ["digits", "mnist1d_builder", "recall_small"])
def test_two_builds_in_two_dirs_are_identical(tmp_path, request, fixture_name):
    first = request.getfixturevalue(fixture_name)  # built in the module's data dir
    kwargs = {"config": small_recall_config()} if fixture_name == "recall_small" else {}
    # Generation must not touch NumPy's global RNG state (mnist1d seeds it).
    # (Python's `random` is not checked: TFDS itself draws from it for
    # temporary directory names.)
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    second = prepare(first.name, tmp_path, **kwargs)
    assert np.random.rand() == expected
    assert second.data_dir != first.data_dir
    for split in ("train", "test"):
        a, b = split_arrays(first, split), split_arrays(second, split)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    "name,cls,kwargs",
    [
        ("sklearn_digits", SklearnDigits, {}),
        ("mnist1d", Mnist1d, {}),
        ("associative_recall", AssociativeRecall, {"config": "small"}),
    ],
)
def test_second_prepare_reuses_data(data_dir, monkeypatch, name, cls, kwargs):
    if kwargs.get("config") == "small":
        kwargs = {"config": small_recall_config()}
    builder = prepare(name, data_dir, **kwargs)
    before = tree_files(builder.data_dir)
    assert before

    def boom(*args, **kw):
        raise AssertionError("data was regenerated")

    monkeypatch.setattr(cls, "_split_generators", boom)
    monkeypatch.setattr(cls, "_generate_examples", boom)
    again = prepare(name, data_dir, **kwargs)
    assert again.data_dir == builder.data_dir
    assert tree_files(again.data_dir) == before
    # load_splits goes through the same prepare-once path.
    bundle = load_splits(name, data_dir, batch_size=64, seed=0, builder_kwargs=kwargs)
    assert bundle.train_size > 0
    assert tree_files(again.data_dir) == before


# --------------------------------------------------------------------------- #
# load_splits on our datasets
# --------------------------------------------------------------------------- #


def epoch(ds) -> tuple:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_load_splits_digits_sizes_shapes(data_dir, digits):
    bundle = load_splits("sklearn_digits", data_dir, batch_size=100, seed=0)
    assert isinstance(bundle, DataBundle)
    assert (bundle.name, bundle.task) == ("sklearn_digits", "classification")
    assert bundle.input_shape == (8, 8, 1) and bundle.num_classes == 10
    assert bundle.val_size == round(0.1 * 1437) == 144
    assert bundle.train_size + bundle.val_size == 1437 and bundle.test_size == 360
    assert bundle.steps_per_epoch == int(np.ceil(bundle.train_size / 100))
    for ds, size in ((bundle.train, bundle.train_size), (bundle.val, bundle.val_size),
                     (bundle.test, bundle.test_size)):
        x, y = epoch(ds)
        assert x.shape == (size, 8, 8, 1) and x.dtype == np.float32
        assert y.shape == (size,) and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0
    batches = list(bundle.train)
    assert len(batches) == bundle.steps_per_epoch
    assert batches[0][0].shape == (100, 8, 8, 1)
    # Test set is unshuffled: identical to the stored test split.
    x_test, y_test = epoch(bundle.test)
    stored = split_arrays(digits, "test")
    np.testing.assert_array_equal(y_test, stored["label"])
    np.testing.assert_allclose(x_test, stored["image"] / 255.0, rtol=1e-6)


def test_load_splits_val_is_disjoint_from_train(data_dir, mnist1d_builder):
    bundle = load_splits("mnist1d", data_dir, batch_size=256, seed=1, val_fraction=0.2)
    assert bundle.input_shape == (40,) and bundle.num_classes == 10
    assert (bundle.train_size, bundle.val_size, bundle.test_size) == (3200, 800, 1000)
    x_train, _ = epoch(bundle.train)
    x_val, _ = epoch(bundle.val)
    train_rows = {row.tobytes() for row in x_train}
    val_rows = {row.tobytes() for row in x_val}
    assert len(train_rows) == 3200 and len(val_rows) == 800
    assert not train_rows & val_rows
    full = {row.tobytes() for row in split_arrays(mnist1d_builder, "train")["x"]}
    assert train_rows | val_rows == full


def test_load_splits_recall(data_dir, recall_small):
    bundle = load_splits(
        "associative_recall", data_dir, batch_size=32, seed=0,
        builder_kwargs={"config": dict(SMALL_RECALL)},  # plain mapping is accepted
    )
    assert bundle.task == "sequence"
    assert bundle.input_shape == (10,) and bundle.num_classes == 16
    assert bundle.metadata["target_shape"] == (2,)
    assert bundle.metadata["seq_len"] == 10
    assert bundle.train_size + bundle.val_size == 300 and bundle.test_size == 60
    x, y = next(iter(bundle.train))
    assert x.shape == (32, 10) and y.shape == (32, 2)
    assert x.dtype.name == "int32" and y.dtype.name == "int32"
    inputs, targets = epoch(bundle.train)
    check_recall_examples(inputs, targets, SMALL_RECALL)


def test_train_shuffle_is_deterministic_given_seed(data_dir, digits):
    def first_two_epochs(seed):
        bundle = load_splits("sklearn_digits", data_dir, batch_size=64, seed=seed)
        return epoch(bundle.train)[1], epoch(bundle.train)[1]

    a1, a2 = first_two_epochs(7)
    b1, b2 = first_two_epochs(7)
    c1, _ = first_two_epochs(8)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2), "train must be reshuffled every epoch"
    assert not np.array_equal(a1, c1), "a different seed must give a different order"
    assert sorted(a1) == sorted(a2) == sorted(c1)


def test_autotune_is_off_by_default_in_every_split_and_the_epoch_stream(data_dir, digits):
    """tf.data's autotuner is off unless asked for (``load_splits(autotune=...)``), also in
    the trainer's stream of epochs (a new root that inherits nothing from ``flat_map``), and
    the batches are the same either way."""
    from nested_research.training.resume import epoch_stream

    off = load_splits("sklearn_digits", data_dir, batch_size=64, seed=3)
    on = load_splits("sklearn_digits", data_dir, batch_size=64, seed=3, autotune=True)
    for ds in (off.train, off.val, off.test, epoch_stream(off.train, 1, 3)):
        assert ds.options().autotune.enabled is False
    for ds in (on.train, on.val, on.test, epoch_stream(on.train, 1, 3)):
        assert ds.options().autotune.enabled is True
    stream = list(epoch_stream(off.train, 0, 2).as_numpy_iterator())
    tuned = list(epoch_stream(on.train, 0, 2).as_numpy_iterator())
    assert len(stream) == 2 * off.steps_per_epoch
    for (x, y), (x_tuned, y_tuned) in zip(stream, tuned, strict=True):
        np.testing.assert_array_equal(x, x_tuned)
        np.testing.assert_array_equal(y, y_tuned)


def test_val_fraction_zero_gives_no_val(data_dir, digits):
    bundle = load_splits("sklearn_digits", data_dir, batch_size=500, seed=0, val_fraction=0.0)
    assert bundle.val is None and bundle.val_size == 0
    assert bundle.train_size == 1437 and bundle.steps_per_epoch == 3


# --------------------------------------------------------------------------- #
# Standard TFDS datasets (never downloaded)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_standard_datasets_with_mock_data(tmp_path, name, shape):
    with tfds.testing.mock_data(num_examples=24):
        bundle = load_splits(name, str(tmp_path), batch_size=8, seed=0)
        assert bundle.task == "classification"
        assert bundle.input_shape == shape and bundle.num_classes == 10
        x, y = next(iter(bundle.train))
        assert x.shape == (8, *shape) and x.dtype.name == "float32"
        assert y.shape == (8,) and y.dtype.name == "int32"
        assert 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0
        assert next(iter(bundle.test))[0].shape[1:] == shape


def test_unprepared_standard_dataset_raises_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_splits("fashion_mnist", str(tmp_path), batch_size=8, seed=0)
    message = str(excinfo.value)
    assert "fashion_mnist" in message and str(tmp_path) in message
    assert "tfds build fashion_mnist" in message
    assert isinstance(excinfo.value, FileNotFoundError)
    assert not os.listdir(tmp_path), "nothing should be written to data_dir"


# --------------------------------------------------------------------------- #
# Bad inputs
# --------------------------------------------------------------------------- #


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="no_such_dataset_xyz") as excinfo:
        load_splits("no_such_dataset_xyz", str(tmp_path), batch_size=8, seed=0)
    for embedded in EMBEDDED_DATASETS:
        assert embedded in str(excinfo.value)


@pytest.mark.parametrize(
    "param,value",
    [
        ("batch_size", 0),
        ("batch_size", -3),
        ("batch_size", 2.5),
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("val_fraction", 1.5),
        ("val_fraction", "a lot"),
        ("seed", -1),
        ("shuffle_buffer", 0),
        ("autotune", "yes"),
        ("builder_kwargs", ["not", "a", "dict"]),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, param, value):
    kwargs = dict(name="sklearn_digits", data_dir=str(tmp_path), batch_size=8, seed=0)
    kwargs[param] = value
    with pytest.raises(ValueError, match=param) as excinfo:
        load_splits(**kwargs)
    # One wording everywhere: "<param>=<value!r> must be <what is allowed>".
    assert f"{param}={value!r} must be " in str(excinfo.value), str(excinfo.value)
    assert not os.listdir(tmp_path), "validation must happen before any preparation"


def test_non_image_standard_dataset_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="image"):
        load_splits("imdb_reviews", str(tmp_path), batch_size=8, seed=0)

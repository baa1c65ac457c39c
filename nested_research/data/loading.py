"""Turn a TFDS dataset into batched ``tf.data`` train / validation / test pipelines.

:func:`load_splits` is the single entry point used by the rest of the
framework.  It knows two kinds of datasets:

* the datasets embedded in this package (:data:`EMBEDDED_DATASETS`):
  ``sklearn_digits``, ``mnist1d`` and ``associative_recall``.  They are
  generated locally, so they are prepared into ``data_dir`` on first use
  (``builder.download_and_prepare()``) and simply reused afterwards;
* any standard TFDS image-classification dataset (``mnist``,
  ``fashion_mnist``, ``cifar10``, ... anything ``tfds.builder`` knows that has
  an ``image`` and a ``label`` feature).  These are *never* downloaded: they
  must already be prepared in ``data_dir`` (``tfds build NAME --data_dir
  DATA_DIR`` on a machine with internet access, then copy the folder),
  otherwise :class:`DatasetNotFoundError` is raised.

A prepared folder is checked before use, reading only (metadata files, the
shard files ``dataset_info.json`` lists and their sizes, the first record of
every shard): a damaged one raises :class:`DatasetCorruptError` naming the
folder to delete; it is never repaired, deleted or regenerated here, also for
the embedded datasets.  :func:`check_data_dir` runs these checks alone.

Splits
    The validation set is carved deterministically from the end of the TFDS
    ``train`` split: with ``n`` training examples and ``n_val =
    round(val_fraction * n)`` (at least 1 when ``val_fraction > 0``),
    ``train = "train[:n - n_val]"`` and ``val = "train[n - n_val:]"``.  The
    test set is TFDS ``test`` (``validation`` for datasets that have no
    ``test`` split).

Preprocessing
    Every dataset yields ``(inputs, targets)`` tuples, batched and prefetched:

    * images: ``float32`` in ``[0, 1]`` (``uint8 / 255``), shape ``(B, H, W, C)``;
      labels ``int32`` ``(B,)``;
    * ``mnist1d``: ``float32`` ``(B, 40)``, left as generated (already
      standardised to zero mean / unit variance by the generator); labels
      ``int32`` ``(B,)``;
    * ``associative_recall``: token ids ``int32`` ``(B, L)`` and targets
      ``int32`` ``(B, Q)`` for the last ``Q`` positions (see
      :mod:`nested_research.data.assoc_recall`).

    The training pipeline is shuffled with ``seed`` (``reshuffle_each_iteration``
    so every epoch has a new order, and the sequence of orders is the same for
    the same seed).  Validation and test are not shuffled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from nested_research.data.assoc_recall import AssociativeRecallConfig, make_config

if TYPE_CHECKING:  # pragma: no cover - typing only; TF itself is imported lazily
    import tensorflow as tf

__all__ = [
    "DataBundle",
    "DataDirError",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "EMBEDDED_DATASETS",
    "check_data_dir",
    "load_splits",
]

#: Datasets generated locally by the builders of this package.
EMBEDDED_DATASETS: Tuple[str, ...] = ("sklearn_digits", "mnist1d", "associative_recall")

# How each embedded dataset is turned into (inputs, targets).
_EMBEDDED_KIND = {
    "sklearn_digits": "image",
    "mnist1d": "vector",
    "associative_recall": "sequence",
}


class DataDirError(OSError):
    """``data_dir`` cannot be used as it is (base of the two errors below).

    Attributes ``name`` (the dataset) and ``data_dir``.  Nothing on disk is
    changed when one of these is raised.
    """

    def __init__(self, name: str, data_dir: str, message: str) -> None:
        self.name = name
        self.data_dir = data_dir
        super().__init__(message)


class DatasetNotFoundError(DataDirError, FileNotFoundError):
    """A standard TFDS dataset is not prepared in the given ``data_dir``.

    Raised instead of attempting a download.  Attributes ``name`` and
    ``data_dir`` identify what was looked for.
    """

    def __init__(self, name: str, data_dir: str, detail: str = "") -> None:
        message = (
            f"TFDS dataset {name!r} is not prepared in data_dir {data_dir!r}"
            f"{f' ({detail})' if detail else ''} and downloads are disabled. "
            f"Prepare it on a machine with internet access with "
            f"`tfds build {name} --data_dir {data_dir}` and copy the '{name}/' "
            f"folder into that data_dir."
        )
        super().__init__(name, data_dir, message)


class DatasetCorruptError(DataDirError):
    """A prepared dataset folder in ``data_dir`` is damaged or incomplete.

    Detected before training (metadata files, shard files and their sizes,
    the first record of every shard).  The folder is never repaired, deleted
    or regenerated automatically; attribute ``folder`` names it.
    """

    def __init__(self, name: str, data_dir: str, folder: str, problem: str) -> None:
        self.folder = folder
        if name in EMBEDDED_DATASETS:
            again = "it is generated again on the next run"
        else:
            again = f"`tfds build {name} --data_dir {data_dir}` where there is internet access"
        message = (
            f"TFDS dataset {name!r} in data_dir {data_dir!r} is corrupt or incomplete: "
            f"{problem}. Nothing was changed; delete the folder {folder!r} and prepare "
            f"it again ({again})."
        )
        super().__init__(name, data_dir, message)


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """Batched train / validation / test pipelines plus what a model needs to know.

    Attributes:
        name: the dataset name passed to :func:`load_splits`.
        task: ``"classification"`` (one integer label per example) or
            ``"sequence"`` (integer targets per query position).
        train: shuffled, batched, prefetched ``(inputs, targets)`` dataset.
        val: batched validation dataset, or ``None`` when ``val_fraction == 0``.
        test: batched test dataset.
        input_shape: shape of one input example, without the batch dimension.
        num_classes: number of output classes (vocabulary size for sequences).
        train_size, val_size, test_size: number of examples in each split.
        steps_per_epoch: ``ceil(train_size / batch_size)`` (last batch may be
            smaller; batches are not dropped).
        metadata: extra facts (``batch_size``, ``seed``, TFDS split strings,
            ``target_shape``, ``full_name``, and for ``associative_recall`` the
            config parameters and ``seq_len``).
    """

    name: str
    task: str
    train: "tf.data.Dataset"
    val: Optional["tf.data.Dataset"]
    test: "tf.data.Dataset"
    input_shape: Tuple[int, ...]
    num_classes: int
    train_size: int
    val_size: int
    test_size: int
    steps_per_epoch: int
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)


def _check_int(param: str, value: Any, minimum: int, allowed: str) -> int:
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{param} must be {allowed}, got {value!r}")
    return value


def _validate_args(
    name: Any,
    data_dir: Any,
    batch_size: Any,
    seed: Any,
    val_fraction: Any,
    builder_kwargs: Any,
    shuffle_buffer: Any,
) -> Tuple[int, int, float, int, Dict[str, Any]]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty dataset name, got {name!r}")
    if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
        raise ValueError(f"data_dir must be a non-empty path, got {data_dir!r}")
    batch_size = _check_int("batch_size", batch_size, 1, "an integer >= 1")
    seed = _check_int("seed", seed, 0, "a non-negative integer")
    shuffle_buffer = _check_int("shuffle_buffer", shuffle_buffer, 1, "an integer >= 1")
    try:
        fraction = float(val_fraction)
    except (TypeError, ValueError):
        fraction = float("nan")
    if isinstance(val_fraction, bool) or not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"val_fraction must be a float in [0, 1) (0 disables validation), "
            f"got {val_fraction!r}"
        )
    if builder_kwargs is None:
        kwargs: Dict[str, Any] = {}
    elif isinstance(builder_kwargs, Mapping):
        kwargs = dict(builder_kwargs)
    else:
        raise ValueError(f"builder_kwargs must be a dict or None, got {builder_kwargs!r}")
    if "data_dir" in kwargs:
        raise ValueError("builder_kwargs must not contain 'data_dir'; pass data_dir= instead")
    return batch_size, seed, fraction, shuffle_buffer, kwargs


def _nearest_existing(path: str) -> str:
    """``path`` itself or its closest ancestor that exists."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _check_dir_path(name: str, data_dir: str) -> None:
    """``data_dir`` is a directory or can become one (no file in the way)."""
    found = _nearest_existing(data_dir)
    if not os.path.isdir(found):
        where = "is" if found == os.path.abspath(data_dir) else f"lies under {found!r}, which is"
        raise DataDirError(
            name, data_dir,
            f"data_dir {data_dir!r} {where} a file, not a directory; give the TFDS data "
            f"directory (it holds one '<dataset>/' folder per dataset)",
        )


def _check_writable(name: str, data_dir: str, folder: str) -> None:
    """An embedded dataset that is not prepared can be generated into ``folder``."""
    found = _nearest_existing(folder)
    if not os.access(found, os.W_OK | os.X_OK):
        raise DataDirError(
            name, data_dir,
            f"dataset {name!r} is not prepared in data_dir {data_dir!r} and cannot be "
            f"generated there: {found!r} is not writable. Give a writable data_dir, or "
            f"prepare the dataset elsewhere and copy its '{name}/' folder into this one",
        )


_METADATA_FILES = ("dataset_info.json", "features.json")
# Bytes around each TFRecord payload: length (8), CRC of the length (4), CRC of the data (4).
_TFRECORD_FRAMING = 16
_CRC_TABLE: list = []


def _masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that frames TFRecords (pure Python: only headers and first records)."""
    if not _CRC_TABLE:
        for i in range(256):
            crc = i
            for _ in range(8):
                crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
            _CRC_TABLE.append(crc)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _scan_tfrecord(path: str, size: int, every_record: bool) -> Tuple[Optional[str], int]:
    """``(problem or None, records seen)``.

    Checks the first record (header and data CRCs) and, with ``every_record``,
    walks every record header to the end of the file (truncation, garbage,
    the number of records).
    """
    count, offset = 0, 0
    with open(path, "rb") as fh:
        while offset < size:
            header = fh.read(12)
            if len(header) < 12:
                return f"truncated record header at byte {offset}", count
            length, length_crc = struct.unpack("<QI", header)
            if _masked_crc32c(header[:8]) != length_crc:
                return f"corrupted record header at byte {offset}", count
            end = offset + 12 + length + 4
            if end > size:
                return (f"the record at byte {offset} is truncated (it needs {end} bytes, "
                        f"the file has {size})"), count
            if count == 0:
                payload = fh.read(length)
                (data_crc,) = struct.unpack("<I", fh.read(4))
                if _masked_crc32c(payload) != data_crc:
                    return f"corrupted record data at byte {offset}", count
            else:
                fh.seek(end)
            count, offset = count + 1, end
            if not every_record:
                break
    return None, count


def _verify_prepared(builder: tfds.core.DatasetBuilder, name: str, data_dir: str) -> bool:
    """Whether ``builder``'s folder exists; raises :class:`DatasetCorruptError` if it is damaged.

    Reads only: the metadata files must exist and parse, every shard file that
    ``dataset_info.json`` lists must exist, a split's TFRecord shards must have
    the recorded size (else every record header is walked and counted), and the
    first record of every shard must pass its CRC checks.
    """
    folder = os.fspath(builder.data_dir)
    if not os.path.isdir(folder):
        return False

    def corrupt(problem: str) -> DatasetCorruptError:
        return DatasetCorruptError(name, data_dir, folder, problem)

    for fname in _METADATA_FILES:
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            raise corrupt(f"{fname} is missing")
        try:
            with open(path, encoding="utf-8") as fh:
                json.load(fh)
        except (OSError, ValueError) as err:
            raise corrupt(f"{fname} is not valid JSON ({err})") from None
    splits = dict(builder.info.splits.items())
    if not splits:
        raise corrupt("dataset_info.json lists no splits")
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    for split, info in sorted(splits.items()):
        paths = [os.fspath(p) for p in info.filepaths]
        missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise corrupt(f"shard file {missing[0]!r} of split {split!r} is missing{more}")
        if file_format not in (None, "tfrecord"):
            continue
        lengths = [int(n) for n in info.shard_lengths]
        sizes = [os.path.getsize(p) for p in paths]
        expected = int(info.num_bytes) + _TFRECORD_FRAMING * sum(lengths)
        mismatch = int(info.num_bytes) > 0 and sum(sizes) != expected
        note = (f" (the {split!r} shards hold {sum(sizes)} bytes, dataset_info.json "
                f"implies {expected})" if mismatch else "")
        for path, size, length in zip(paths, sizes, lengths):
            shard = f"shard file {os.path.basename(path)!r} ({size} bytes)"
            problem, count = _scan_tfrecord(path, size, every_record=mismatch)
            if problem is not None:
                raise corrupt(f"{shard}: {problem}{note}")
            if count != (length if mismatch else min(length, 1)):
                if count < length:
                    what = f"is truncated: it holds {count} of the {length} records"
                else:
                    what = f"holds {count} records where there should be {length}"
                raise corrupt(f"{shard} {what} that dataset_info.json lists{note}")
    return True


def _reading_metadata(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) was raised while TFDS read a dataset's metadata."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        tb = err.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_name in ("read_from_directory", "read_from_json",
                                              "load_metadata"):
                return True
            tb = tb.tb_next
        err = err.__cause__ or err.__context__
    return False


def _unreadable_metadata(name: str, data_dir: str, err: Exception) -> DatasetCorruptError:
    """The error for a prepared folder whose metadata TFDS failed to read."""
    root = os.path.join(data_dir, name)
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for fname in _METADATA_FILES:
            if fname in files:
                try:
                    with open(os.path.join(folder, fname), encoding="utf-8") as fh:
                        json.load(fh)
                except (OSError, ValueError) as bad:
                    return DatasetCorruptError(name, data_dir, folder,
                                               f"{fname} is not valid JSON ({bad})")
    first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
    return DatasetCorruptError(name, data_dir, root,
                               f"its dataset_info.json cannot be used ({first[:300]})")


def _make_builder(
    name: str, data_dir: str, kwargs: Dict[str, Any], prepare: bool = True
) -> tfds.core.DatasetBuilder:
    """Instantiate the builder and check its folder; prepare embedded datasets, never download.

    A prepared folder that is damaged raises :class:`DatasetCorruptError`
    (also for embedded datasets: they are not regenerated over it).  With
    ``prepare=False`` nothing is written.
    """
    if name == "associative_recall" and isinstance(kwargs.get("config"), Mapping):
        # Convenience for Hydra / YAML: a plain mapping of MQAR sizes.
        kwargs["config"] = make_config(**dict(kwargs["config"]))
    if name not in EMBEDDED_DATASETS and ":" in name:
        raise ValueError(
            f"name {name!r}: namespaced (community) datasets are not supported; "
            f"use one of {EMBEDDED_DATASETS} or a standard TFDS image dataset name"
        )
    _check_dir_path(name, data_dir)
    extra = {} if name in EMBEDDED_DATASETS else {"try_gcs": False}
    try:
        builder = tfds.builder(name, data_dir=data_dir, **extra, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"unknown dataset name {name!r}: expected one of the embedded datasets "
            f"{', '.join(EMBEDDED_DATASETS)} or a standard TFDS image-classification "
            f"dataset (e.g. mnist, fashion_mnist, cifar10)"
        ) from None
    except Exception as err:
        if _reading_metadata(err):
            raise _unreadable_metadata(name, data_dir, err) from err
        raise
    prepared = _verify_prepared(builder, name, data_dir)
    if name in EMBEDDED_DATASETS and not prepared:
        _check_writable(name, data_dir, os.fspath(builder.data_dir))
        if prepare:
            # Local generation only.
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
    return builder


def _not_prepared_detail(builder: tfds.core.DatasetBuilder, data_dir: str) -> str:
    if not os.path.isdir(data_dir):
        return "the data_dir does not exist"
    return f"it has no folder {os.path.relpath(os.fspath(builder.data_dir), data_dir)!r}"


def check_data_dir(name: str, data_dir: str, builder_kwargs: dict | None = None) -> None:
    """Check, reading only, that :func:`load_splits` can use ``data_dir`` for ``name``.

    Raises what :func:`load_splits` would raise about the directory before any
    data is generated or read (``ValueError`` for a bad name or argument,
    :class:`DatasetNotFoundError`, :class:`DatasetCorruptError`,
    :class:`DataDirError`); writes nothing.  An embedded dataset that is not
    prepared yet passes when it can be generated into ``data_dir``.
    """
    _, _, _, _, kwargs = _validate_args(name, data_dir, 1, 0, 0.0, builder_kwargs, 1)
    data_dir = os.path.expanduser(os.fspath(data_dir))
    builder = _make_builder(name, data_dir, kwargs, prepare=False)
    if name not in EMBEDDED_DATASETS and not os.path.isdir(os.fspath(builder.data_dir)):
        raise DatasetNotFoundError(name, data_dir, _not_prepared_detail(builder, data_dir))


def _classification_kind(builder: tfds.core.DatasetBuilder, name: str) -> str:
    """Check that a standard dataset has fixed-shape ``image`` and a ``label``."""
    features = builder.info.features
    keys = set(features.keys()) if hasattr(features, "keys") else set()
    if not {"image", "label"} <= keys:
        raise ValueError(
            f"dataset {name!r} is not supported: standard TFDS datasets need 'image' "
            f"and 'label' features, it has {sorted(keys)}"
        )
    if not isinstance(features["label"], tfds.features.ClassLabel):
        raise ValueError(f"dataset {name!r}: 'label' must be a ClassLabel feature")
    shape = features["image"].shape
    if any(dim is None for dim in shape):
        raise ValueError(
            f"dataset {name!r}: images have a variable shape {shape}; only fixed-size "
            f"image datasets are supported"
        )
    return "image"


def _known_splits(builder: tfds.core.DatasetBuilder) -> Dict[str, int]:
    try:
        return {split: info.num_examples for split, info in builder.info.splits.items()}
    except Exception:  # pragma: no cover - split info unavailable (e.g. mocked data)
        return {}


def _split_strings(
    builder: tfds.core.DatasetBuilder, name: str, val_fraction: float
) -> Tuple[str, Optional[str], str]:
    splits = _known_splits(builder)
    if splits and "train" not in splits:
        raise ValueError(f"dataset {name!r} has no 'train' split (splits: {sorted(splits)})")
    if not splits or "test" in splits:
        test_split = "test"
    elif "validation" in splits:
        test_split = "validation"
    else:
        raise ValueError(
            f"dataset {name!r} has neither a 'test' nor a 'validation' split "
            f"(splits: {sorted(splits)})"
        )
    num_train = splits.get("train", 0)
    if val_fraction == 0.0:
        return "train", None, test_split
    if num_train <= 0:
        # Split sizes unknown (only happens with mocked data): percent slicing.
        cut = f"{100.0 * (1.0 - val_fraction):g}"
        return f"train[:{cut}%]", f"train[{cut}%:]", test_split
    num_val = max(1, int(round(val_fraction * num_train)))
    if num_val >= num_train:
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training examples out of {num_train}"
        )
    cut = num_train - num_val
    return f"train[:{cut}]", f"train[{cut}:]", test_split


def _as_dataset(builder: tfds.core.DatasetBuilder, split: str, name: str, data_dir: str):
    """``builder.as_dataset`` that reports missing data as DatasetNotFoundError."""
    try:
        return builder.as_dataset(
            split=split,
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=True),
        )
    except AssertionError as err:
        if builder.is_prepared():
            raise
        raise DatasetNotFoundError(name, data_dir, _not_prepared_detail(builder, data_dir)) from err


def _size(ds: "tf.data.Dataset", builder: tfds.core.DatasetBuilder, split: str) -> int:
    cardinality = int(ds.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(builder.info.splits[split].num_examples)  # pragma: no cover


def load_splits(
    name: str,
    data_dir: str,
    batch_size: int,
    seed: int,
    val_fraction: float = 0.1,
    builder_kwargs: dict | None = None,
    shuffle_buffer: int = 10000,
) -> DataBundle:
    """Load ``name`` from ``data_dir`` as batched train / val / test pipelines.

    Args:
        name: an embedded dataset (:data:`EMBEDDED_DATASETS`) or a standard
            TFDS image-classification dataset (``mnist``, ``fashion_mnist``,
            ``cifar10``, ...).
        data_dir: TFDS data directory.  Embedded datasets are generated into
            it on first use; standard datasets must already be prepared there.
        batch_size: examples per batch (>= 1).
        seed: shuffle seed for the training pipeline (>= 0).
        val_fraction: fraction of TFDS ``train`` held out (from its end) as
            validation, in ``[0, 1)``; ``0`` gives ``val=None``.
        builder_kwargs: extra keyword arguments for ``tfds.builder`` (e.g.
            ``{"config": make_config(num_pairs=4)}`` or, for
            ``associative_recall``, a plain mapping of config parameters
            ``{"config": {"num_pairs": 4, "num_train": 2000}}``).
        shuffle_buffer: maximum shuffle buffer size (capped at the number of
            training examples, i.e. a full shuffle for small datasets).

    Returns:
        A :class:`DataBundle`.

    Raises:
        ValueError: unknown ``name`` or an invalid argument (the message names
            the parameter, the value and what is allowed).
        DatasetNotFoundError: a standard TFDS dataset is not prepared in
            ``data_dir`` (no download is attempted).
        DatasetCorruptError: the dataset's folder in ``data_dir`` is damaged
            (missing or invalid metadata, a missing, truncated or garbled
            shard); it is left as it is, also for embedded datasets.
        DataDirError: ``data_dir`` is a file, or an embedded dataset that is
            not prepared cannot be generated into it.
    """
    batch_size, seed, val_fraction, shuffle_buffer, kwargs = _validate_args(
        name, data_dir, batch_size, seed, val_fraction, builder_kwargs, shuffle_buffer
    )
    data_dir = os.path.expanduser(os.fspath(data_dir))

    import tensorflow as tf  # Imported lazily to keep `import nested_research.data` cheap.

    builder = _make_builder(name, data_dir, kwargs)
    kind = _EMBEDDED_KIND.get(name) or _classification_kind(builder, name)
    train_split, val_split, test_split = _split_strings(builder, name, val_fraction)
    features = builder.info.features

    if kind == "image":
        num_classes = int(features["label"].num_classes)
        image_dtype = tf.as_dtype(features["image"].np_dtype)
        scale = 1.0 / float(image_dtype.max) if image_dtype.is_integer else 1.0

        def to_pair(example):
            return example["image"], tf.cast(example["label"], tf.int32)

        def finish(x, y):
            return tf.cast(x, tf.float32) * scale, y

    elif kind == "vector":
        num_classes = int(features["label"].num_classes)

        def to_pair(example):
            return example["x"], tf.cast(example["label"], tf.int32)

        finish = None
    else:  # sequence
        config: AssociativeRecallConfig = builder.builder_config
        num_classes = int(config.vocab_size)

        def to_pair(example):
            return example["inputs"], example["targets"]

        finish = None

    def pipeline(split: str, shuffle: bool) -> Tuple["tf.data.Dataset", int]:
        ds = _as_dataset(builder, split, name, data_dir)
        ds = ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)
        size = _size(ds, builder, split)
        if shuffle and size > 1:
            ds = ds.shuffle(
                min(shuffle_buffer, size), seed=seed, reshuffle_each_iteration=True
            )
        ds = ds.batch(batch_size)
        if finish is not None:
            ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE), size

    train, train_size = pipeline(train_split, shuffle=True)
    if val_split is None:
        val, val_size = None, 0
    else:
        val, val_size = pipeline(val_split, shuffle=False)
    test, test_size = pipeline(test_split, shuffle=False)

    x_spec, y_spec = train.element_spec
    input_shape = tuple(int(d) for d in x_spec.shape[1:])
    metadata: Dict[str, Any] = {
        "full_name": builder.info.full_name,
        "data_dir": data_dir,
        "batch_size": batch_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "splits": {"train": train_split, "val": val_split, "test": test_split},
        "target_shape": tuple(int(d) for d in y_spec.shape[1:]),
    }
    if kind == "sequence":
        metadata.update(builder.builder_config.params())
        metadata["seq_len"] = builder.builder_config.seq_len
        metadata["config_name"] = builder.builder_config.name

    return DataBundle(
        name=name,
        task="sequence" if kind == "sequence" else "classification",
        train=train,
        val=val,
        test=test,
        input_shape=input_shape,
        num_classes=num_classes,
        train_size=train_size,
        val_size=val_size,
        test_size=test_size,
        steps_per_epoch=max(1, math.ceil(train_size / batch_size)),
        metadata=metadata,
    )

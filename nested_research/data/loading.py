"""Turn a TFDS dataset into batched ``tf.data`` train / validation / test pipelines.

:func:`load_splits` is the single entry point used by the rest of the
framework.  It knows two kinds of datasets:

* the datasets embedded in this package (:data:`EMBEDDED_DATASETS`):
  ``sklearn_digits``, ``mnist1d``, ``associative_recall`` and
  ``python_stdlib_text``.  They are
  generated locally, so they are prepared into ``data_dir`` on first use
  (``builder.download_and_prepare()``) and simply reused afterwards;
* any standard TFDS image-classification dataset (``mnist``,
  ``fashion_mnist``, ``cifar10``, ... anything ``tfds.builder`` knows that has
  an ``image`` and a ``label`` feature).  These are *never* downloaded: they
  must already be prepared in ``data_dir`` (``tfds build NAME --data_dir
  DATA_DIR`` on a machine with internet access, then copy the folder),
  otherwise :class:`DatasetNotFoundError` is raised.

A prepared folder is checked before use, reading only, by
:mod:`nested_research.data.data_dir` (which holds those checks, the errors
they raise and :func:`~nested_research.data.data_dir.check_data_dir`): a
damaged one raises :class:`DatasetCorruptError` naming the folder to delete; it
is never repaired, deleted or regenerated, also for the embedded datasets.

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
      :mod:`nested_research.data.assoc_recall`);
    * ``python_stdlib_text`` (task ``"language_model"``): byte tokens ``int32``
      ``(B, L)`` and next-byte targets ``int32`` ``(B, L)``, one per position
      (see :mod:`nested_research.data.pystdlib`); ``num_classes`` 256.

    The training pipeline is shuffled with ``seed`` (``reshuffle_each_iteration``
    so every epoch has a new order, and the sequence of orders is the same for
    the same seed).  Validation and test are not shuffled.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import tensorflow_datasets as tfds

from nested_research.core.checks import check_bool, check_int, check_real
from nested_research.data.assoc_recall import AssociativeRecallConfig
from nested_research.data.data_dir import (DatasetNotFoundError, check_source_args, make_builder,
                                           not_prepared_detail)
from nested_research.data.pystdlib import VOCAB_SIZE as BYTE_VOCAB_SIZE

if TYPE_CHECKING:  # pragma: no cover - typing only; TF itself is imported lazily
    import tensorflow as tf

__all__ = ["DataBundle", "load_splits"]

# How each embedded dataset is turned into (inputs, targets).
_EMBEDDED_KIND = {
    "sklearn_digits": "image",
    "mnist1d": "vector",
    "associative_recall": "sequence",
    "python_stdlib_text": "language_model",
}


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """Batched train / validation / test pipelines plus what a model needs to know.

    Attributes:
        name: the dataset name passed to :func:`load_splits`.
        task: ``"classification"`` (one integer label per example),
            ``"sequence"`` (integer targets per query position) or
            ``"language_model"`` (byte-level next-token targets at every
            position; the trainer reports bits per byte).
        train: shuffled, batched, prefetched ``(inputs, targets)`` dataset.
        val: batched validation dataset, or ``None`` when ``val_fraction == 0``.
        test: batched test dataset.
        input_shape: shape of one input example, without the batch dimension.
        num_classes: number of output classes (vocabulary size for sequences).
        train_size, val_size, test_size: number of examples in each split.
        steps_per_epoch: ``ceil(train_size / batch_size)`` (last batch may be
            smaller; batches are not dropped).
        metadata: extra facts (``batch_size``, ``seed``, TFDS split strings,
            ``target_shape``, ``full_name``, and for ``associative_recall`` and
            ``python_stdlib_text`` the config parameters, ``seq_len``,
            ``vocab_size`` and ``config_name``).
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


def _validate_args(
    name: Any,
    data_dir: Any,
    batch_size: Any,
    seed: Any,
    val_fraction: Any,
    builder_kwargs: Any,
    shuffle_buffer: Any,
    autotune: Any,
) -> Tuple[int, int, float, int, bool, Dict[str, Any]]:
    kwargs = check_source_args(name, data_dir, builder_kwargs)
    batch_size = check_int("batch_size", batch_size, low=1)
    seed = check_int("seed", seed, low=0)
    shuffle_buffer = check_int("shuffle_buffer", shuffle_buffer, low=1)
    fraction = check_real("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
    autotune = check_bool("autotune", autotune)
    return batch_size, seed, fraction, shuffle_buffer, autotune, kwargs


def _classification_kind(builder: tfds.core.DatasetBuilder, name: str) -> str:
    """Check that a standard dataset has fixed-shape ``image`` and a ``label``."""
    features = builder.info.features
    keys = set(features.keys()) if hasattr(features, "keys") else set()
    if not {"image", "label"} <= keys:
        raise ValueError(
            f"name={name!r} must be an image-classification dataset (standard TFDS "
            f"datasets need 'image' and 'label' features; it has {sorted(keys)})"
        )
    if not isinstance(features["label"], tfds.features.ClassLabel):
        raise ValueError(f"name={name!r} must be a dataset whose 'label' is a ClassLabel feature")
    shape = features["image"].shape
    if any(dim is None for dim in shape):
        raise ValueError(
            f"name={name!r} must be a fixed-size image dataset (its images have the "
            f"variable shape {shape})"
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
        raise ValueError(f"name={name!r} must be a dataset with a 'train' split "
                         f"(it has {sorted(splits)})")
    if not splits or "test" in splits:
        test_split = "test"
    elif "validation" in splits:
        test_split = "validation"
    else:
        raise ValueError(
            f"name={name!r} must be a dataset with a 'test' or a 'validation' split "
            f"(it has {sorted(splits)})"
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
            f"val_fraction={val_fraction!r} must leave at least one of the {num_train} "
            f"'train' examples for training"
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
        raise DatasetNotFoundError(name, data_dir, not_prepared_detail(builder, data_dir)) from err


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
    autotune: bool = False,
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
        autotune: tf.data's autotuner (``tf.data.Options().autotune``).  Off
            by default: its model thread wakes at a period that doubles up to
            60 s, and an iterator's destructor waits for it, so on a core
            shared with training the end of every ``fit`` stalled for up to a
            minute (a 2,030-step language-model run on one core: 155 s wall
            for 102 s of CPU, 53 s of it idle at the end; 112 s with it off).
            Off, ``AUTOTUNE`` parallelism and buffer sizes take tf.data's fixed
            defaults.  The batches are the same either way; turn it on for
            input pipelines that need tuning (large decoded images on many
            cores).

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
    batch_size, seed, val_fraction, shuffle_buffer, autotune, kwargs = _validate_args(
        name, data_dir, batch_size, seed, val_fraction, builder_kwargs, shuffle_buffer, autotune
    )
    data_dir = os.path.expanduser(os.fspath(data_dir))

    import tensorflow as tf  # Imported lazily to keep `import nested_research.data` cheap.

    builder = make_builder(name, data_dir, kwargs)
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
    elif kind == "sequence":
        config: AssociativeRecallConfig = builder.builder_config
        num_classes = int(config.vocab_size)

        def to_pair(example):
            return example["inputs"], example["targets"]

        finish = None
    else:  # language_model: uint8 bytes on disk
        num_classes = BYTE_VOCAB_SIZE

        def to_pair(example):
            return tf.cast(example["x"], tf.int32), tf.cast(example["y"], tf.int32)

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
        options = tf.data.Options()
        options.autotune.enabled = autotune
        return ds.prefetch(tf.data.AUTOTUNE).with_options(options), size

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
    if kind in ("sequence", "language_model"):
        metadata.update(builder.builder_config.params())
        metadata["seq_len"] = builder.builder_config.seq_len
        metadata["config_name"] = builder.builder_config.name
        metadata.setdefault("vocab_size", num_classes)

    return DataBundle(
        name=name,
        task=kind if kind in ("sequence", "language_model") else "classification",
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

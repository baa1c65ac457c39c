"""What a TFDS ``data_dir`` must hold, checked reading only, and the errors it raises.

A dataset's prepared folder in ``data_dir`` is checked before use, reading only
(metadata files, the shard files ``dataset_info.json`` lists and their sizes,
the first record of every shard, see :mod:`nested_research.data.tfrecord`): a
damaged one raises :class:`DatasetCorruptError` naming the folder to delete; it
is never repaired, deleted or regenerated here, also for the embedded datasets.
A standard TFDS dataset that is not prepared raises
:class:`DatasetNotFoundError` (it is never downloaded); a ``data_dir`` that is a
file, or where an embedded dataset cannot be generated, raises
:class:`DataDirError`.

:func:`check_data_dir` runs these checks alone (the entry point calls it before
anything is written); :func:`make_builder` runs them and returns the TFDS
builder that :func:`nested_research.data.loading.load_splits` reads from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Dict, Tuple

import tensorflow_datasets as tfds

from nested_research.core.checks import check_str
from nested_research.data.assoc_recall import make_config as make_recall_config
from nested_research.data.pystdlib import make_config as make_pystdlib_config
from nested_research.data.tfrecord import TFRECORD_FRAMING, scan_tfrecord

__all__ = [
    "DataDirError",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "EMBEDDED_DATASETS",
    "check_data_dir",
]

#: Datasets generated locally by the builders of this package.
EMBEDDED_DATASETS: Tuple[str, ...] = ("sklearn_digits", "mnist1d", "associative_recall",
                                      "python_stdlib_text")
#: Embedded datasets whose ``builder_kwargs["config"]`` may be a plain mapping of parameters
#: (Hydra / YAML), turned into a builder config by these functions.
_CONFIG_MAKERS = {"associative_recall": make_recall_config,
                  "python_stdlib_text": make_pystdlib_config}


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


def check_source_args(name: Any, data_dir: Any, builder_kwargs: Any) -> Dict[str, Any]:
    """Check what names a dataset (``name``, ``data_dir``, ``builder_kwargs``); the kwargs as a dict."""
    check_str("name", name, "a non-empty dataset name")
    if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
        raise ValueError(f"data_dir={data_dir!r} must be a non-empty path")
    if builder_kwargs is None:
        kwargs: Dict[str, Any] = {}
    elif isinstance(builder_kwargs, Mapping):
        kwargs = dict(builder_kwargs)
    else:
        raise ValueError(f"builder_kwargs={builder_kwargs!r} must be a dict or None")
    if "data_dir" in kwargs:
        raise ValueError(f"builder_kwargs={builder_kwargs!r} must not contain 'data_dir' "
                         f"(pass data_dir= instead)")
    return kwargs


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
        expected = int(info.num_bytes) + TFRECORD_FRAMING * sum(lengths)
        mismatch = int(info.num_bytes) > 0 and sum(sizes) != expected
        note = (f" (the {split!r} shards hold {sum(sizes)} bytes, dataset_info.json "
                f"implies {expected})" if mismatch else "")
        for path, size, length in zip(paths, sizes, lengths):
            shard = f"shard file {os.path.basename(path)!r} ({size} bytes)"
            problem, count = scan_tfrecord(path, size, every_record=mismatch)
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


def make_builder(
    name: str, data_dir: str, kwargs: Dict[str, Any], prepare: bool = True
) -> tfds.core.DatasetBuilder:
    """Instantiate the builder and check its folder; prepare embedded datasets, never download.

    A prepared folder that is damaged raises :class:`DatasetCorruptError`
    (also for embedded datasets: they are not regenerated over it).  With
    ``prepare=False`` nothing is written.
    """
    if name in _CONFIG_MAKERS and isinstance(kwargs.get("config"), Mapping):
        # Convenience for Hydra / YAML: a plain mapping of the config's parameters.
        kwargs["config"] = _CONFIG_MAKERS[name](**dict(kwargs["config"]))
    if name not in EMBEDDED_DATASETS and ":" in name:
        raise ValueError(
            f"name={name!r} must be one of the embedded datasets {EMBEDDED_DATASETS} or a "
            f"standard TFDS image dataset name (namespaced community datasets are not supported)"
        )
    _check_dir_path(name, data_dir)
    extra = {} if name in EMBEDDED_DATASETS else {"try_gcs": False}
    try:
        builder = tfds.builder(name, data_dir=data_dir, **extra, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"name={name!r} must be one of the embedded datasets "
            f"{', '.join(EMBEDDED_DATASETS)} or a standard TFDS image-classification "
            f"dataset (e.g. mnist, fashion_mnist, cifar10): no dataset has that name"
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


def not_prepared_detail(builder: tfds.core.DatasetBuilder, data_dir: str) -> str:
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
    kwargs = check_source_args(name, data_dir, builder_kwargs)
    data_dir = os.path.expanduser(os.fspath(data_dir))
    builder = make_builder(name, data_dir, kwargs, prepare=False)
    if name not in EMBEDDED_DATASETS and not os.path.isdir(os.fspath(builder.data_dir)):
        raise DatasetNotFoundError(name, data_dir, not_prepared_detail(builder, data_dir))

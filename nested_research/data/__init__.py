"""Data layer: our own TFDS builders and :func:`load_splits`.

Importing this package registers three TFDS datasets (generated locally, no
download): ``sklearn_digits`` (:mod:`.digits`), ``mnist1d`` (:mod:`.mnist1d`)
and ``associative_recall`` (:mod:`.assoc_recall`), so that
``tfds.builder(name, data_dir=...)`` finds them.  :func:`load_splits` turns
those, or any prepared standard TFDS image dataset, into batched
train / val / test ``tf.data`` pipelines (:class:`DataBundle`).

TensorFlow itself, scikit-learn and the ``mnist1d`` package are imported
lazily, when data is generated or loaded.
"""

from nested_research.data.assoc_recall import (
    AssociativeRecall,
    AssociativeRecallConfig,
    make_config as make_recall_config,
)
from nested_research.data.digits import SklearnDigits
from nested_research.data.loading import (
    EMBEDDED_DATASETS,
    DataBundle,
    DataDirError,
    DatasetCorruptError,
    DatasetNotFoundError,
    check_data_dir,
    load_splits,
)
from nested_research.data.mnist1d import Mnist1d

__all__ = [
    "AssociativeRecall",
    "AssociativeRecallConfig",
    "DataBundle",
    "DataDirError",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "EMBEDDED_DATASETS",
    "Mnist1d",
    "SklearnDigits",
    "check_data_dir",
    "load_splits",
    "make_recall_config",
]

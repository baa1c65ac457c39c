"""Data layer: our own TFDS builders and :func:`load_splits`.

Importing this package registers four TFDS datasets (generated locally, no
download): ``sklearn_digits`` (:mod:`.digits`), ``mnist1d`` (:mod:`.mnist1d`),
``associative_recall`` (:mod:`.assoc_recall`) and ``python_stdlib_text``
(:mod:`.pystdlib`, byte-level language modelling on the running Python's
standard library source), so that ``tfds.builder(name, data_dir=...)`` finds
them.  :func:`load_splits` turns those, or any prepared standard TFDS image
dataset, into batched train / val / test ``tf.data`` pipelines
(:class:`DataBundle`).

Modules: :mod:`.loading` builds the splits (:func:`load_splits`,
:class:`DataBundle`); :mod:`.data_dir` checks, reading only, what a
``data_dir`` holds and defines its errors (:func:`check_data_dir`,
:class:`DataDirError` and subclasses); :mod:`.tfrecord` reads TFRecord shards
just far enough to check them; :mod:`.continual` turns a dataset's arrays or ``tf.data``
pipeline into continual-learning tasks (class-incremental splits, permuted inputs).

TensorFlow itself, scikit-learn and the ``mnist1d`` package are imported
lazily, when data is generated or loaded.
"""

from nested_research.data.assoc_recall import (AssociativeRecall, AssociativeRecallConfig,
                                               make_config as make_recall_config)
from nested_research.data.digits import SklearnDigits
from nested_research.data.data_dir import (EMBEDDED_DATASETS, DataDirError, DatasetCorruptError,
                                           DatasetNotFoundError, check_data_dir)
from nested_research.data.loading import DataBundle, load_splits
from nested_research.data.mnist1d import Mnist1d
from nested_research.data.pystdlib import (PythonStdlibText, PythonStdlibTextConfig,
                                           make_config as make_pystdlib_config)

__all__ = [
    "AssociativeRecall",
    "AssociativeRecallConfig",
    "DataBundle",
    "DataDirError",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "EMBEDDED_DATASETS",
    "Mnist1d",
    "PythonStdlibText",
    "PythonStdlibTextConfig",
    "SklearnDigits",
    "check_data_dir",
    "load_splits",
    "make_pystdlib_config",
    "make_recall_config",
]

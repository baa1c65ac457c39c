"""TFDS builder ``mnist1d``: the MNIST-1D benchmark, generated locally.

Data
    MNIST-1D (Greydanus & Kobak, 2020, https://github.com/greydanus/mnist1d):
    ten hand-designed 1-D digit templates that are randomly padded, translated,
    scaled, sheared and corrupted with correlated and i.i.d. noise, then
    resampled to 40 points.  The examples are *generated* here with the
    installed ``mnist1d`` package (``mnist1d.data.make_dataset`` with the
    defaults of ``mnist1d.data.get_dataset_args()``: 5000 samples,
    ``train_split=0.8``, ``final_seq_length=40``, ``shuffle_seq=False``,
    **seed 42**).  The download path of the package (``get_dataset``, which
    fetches a pickle from GitHub) is never used.  (Whether these arrays are
    bit-identical to the published ``mnist1d_data.pkl`` has not been checked:
    that would need a download.)

    ``make_dataset`` standardises the whole set (train and test together) to
    zero mean / unit variance; the stored values are those standardised
    values, cast from float64 to float32.

Features
    ``x``: ``float32`` tensor of shape ``(40,)``.
    ``label``: ``ClassLabel`` with 10 classes.

Split
    The package's own split: the first 4000 generated (already shuffled)
    examples are ``train``, the last 1000 are ``test``.  Order is preserved on
    disk and when reading (``disable_shuffling=True``): the i-th example of a
    split is row i of ``make_dataset(...)["x"]`` / ``["x_test"]``.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds

from nested_research.data._tfds_compat import LocalGeneratorBuilder

__all__ = ["Mnist1d", "MNIST1D_SEED", "generate_mnist1d_arrays"]

#: Seed used for generation (the ``mnist1d`` package default).
MNIST1D_SEED = 42


def generate_mnist1d_arrays(seed: int = MNIST1D_SEED) -> Dict[str, np.ndarray]:
    """Generate MNIST-1D with the package defaults (no download).

    Returns ``x`` (4000, 40), ``y`` (4000,), ``x_test`` (1000, 40),
    ``y_test`` (1000,) as produced by ``mnist1d.data.make_dataset``.

    ``make_dataset`` seeds NumPy's and Python's *global* RNGs; their previous
    states are restored afterwards so that generating the data has no side
    effect on the caller.
    """
    # Imported lazily: the package pulls in matplotlib and requests.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {key: data[key] for key in ("x", "y", "x_test", "y_test")}


class Mnist1d(LocalGeneratorBuilder):
    """MNIST-1D: 4000/1000 1-D digit signals of length 40, 10 classes (seed 42)."""

    name = "mnist1d"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: mnist1d.data.make_dataset with "
        "get_dataset_args() defaults (seed 42).",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "x": tfds.features.Tensor(shape=(40,), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("x", "label"),
            homepage="https://github.com/greydanus/mnist1d",
            citation=(
                "@article{greydanus2020scaling, title={Scaling down Deep "
                "Learning}, author={Greydanus, Sam}, journal={arXiv preprint "
                "arXiv:2011.14439}, year={2020}}"
            ),
            metadata=tfds.core.MetadataDict(seed=MNIST1D_SEED),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Generated locally, nothing to download.
        data = generate_mnist1d_arrays()
        return {
            "train": self._generate_examples(data["x"], data["y"]),
            "test": self._generate_examples(data["x_test"], data["y_test"]),
        }

    def _generate_examples(
        self, xs: np.ndarray, ys: np.ndarray
    ) -> Iterator[Tuple[int, Dict[str, Any]]]:
        for index, (x, y) in enumerate(zip(xs, ys)):
            yield index, {"x": x.astype(np.float32), "label": int(y)}

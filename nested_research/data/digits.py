"""TFDS builder ``sklearn_digits``: scikit-learn's bundled 8x8 handwritten digits.

Data
    The UCI "Optical Recognition of Handwritten Digits" test set as shipped
    *inside* scikit-learn (``sklearn.datasets.load_digits``): 1797 grey-scale
    8x8 images of the digits 0-9, pixel intensities are integers in 0..16.
    Nothing is downloaded: the CSV is part of the scikit-learn wheel.

Features
    ``image``: ``uint8`` tensor of shape ``(8, 8, 1)`` (PNG-encoded on disk).
    Intensities are rescaled from 0..16 to 0..255 with
    ``round(pixel * 255 / 16)``, an injective map, so ``image / 255`` equals
    ``pixel / 16`` to within 1/510 and the original counts can be recovered
    exactly.  Storing ``uint8`` lets the loader treat this dataset like every
    other TFDS image dataset (divide by 255).
    ``label``: ``ClassLabel`` with 10 classes (``"0"`` .. ``"9"``).

Split
    A fixed stratified split made with
    ``sklearn.model_selection.train_test_split(X, y, test_size=0.2,
    random_state=0, stratify=y)``: ``train`` = 1437 examples, ``test`` = 360
    examples.  Examples are stored (and read back) in exactly the order that
    ``train_test_split`` returns them (``disable_shuffling=True``), so the
    i-th example of a split is the i-th row of the corresponding sklearn array.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds

from nested_research.data._tfds_compat import LocalGeneratorBuilder

__all__ = ["SklearnDigits", "TEST_SIZE", "SPLIT_RANDOM_STATE", "digits_split_arrays"]

#: Fraction of the 1797 examples put in ``test`` (stratified).
TEST_SIZE = 0.2
#: ``random_state`` passed to ``train_test_split``.
SPLIT_RANDOM_STATE = 0


def digits_split_arrays() -> Dict[str, np.ndarray]:
    """Return the documented stratified split as ``uint8`` NHWC arrays.

    Returns a dict with ``x_train`` (1437, 8, 8, 1), ``y_train`` (1437,),
    ``x_test`` (360, 8, 8, 1), ``y_test`` (360,).  Images are scaled to
    0..255 as described in the module docstring.
    """
    # Imported lazily: scikit-learn is only needed when the data is generated.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=TEST_SIZE,
        random_state=SPLIT_RANDOM_STATE,
        stratify=labels,
    )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


class SklearnDigits(LocalGeneratorBuilder):
    """scikit-learn 8x8 digits (1797 images, 10 classes), stratified 80/20 split."""

    name = "sklearn_digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: sklearn load_digits, stratified "
        "train_test_split(test_size=0.2, random_state=0).",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
            citation=(
                "@misc{uci_digits, author={Alpaydin, E. and Kaynak, C.}, "
                "title={Optical Recognition of Handwritten Digits}, "
                "year={1998}, howpublished={UCI Machine Learning Repository}}"
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        arrays = digits_split_arrays()
        return {
            "train": self._generate_examples(arrays["x_train"], arrays["y_train"]),
            "test": self._generate_examples(arrays["x_test"], arrays["y_test"]),
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray
    ) -> Iterator[Tuple[int, Dict[str, Any]]]:
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": int(label)}

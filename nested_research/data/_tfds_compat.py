"""Shared base class for the locally generated TFDS builders of this package.

It does two things on top of ``tfds.core.GeneratorBasedBuilder``:

* preparation is quiet: the "Downloading and preparing ..." banners that TFDS
  prints to stdout go to ``absl.logging`` (INFO) instead, and TFDS progress
  bars are switched off while our (small, fast) datasets are generated;
* it works around a TFDS 4.9.x bug (tensorflow/datasets#11212): the default
  ``DatasetBuilder.code_path`` evaluates ``importlib_resources.abc.Traversable``,
  but ``importlib_resources`` is only a TFDS dependency on Python < 3.9, so
  ``download_and_prepare`` fails with ``ModuleNotFoundError`` on newer Pythons
  unless that backport happens to be installed.  Our builders never download
  anything (``code_path`` is only used to locate a ``checksums.tsv`` of
  download URLs), so resolving the path with :func:`inspect.getfile` is exact.
"""

from __future__ import annotations

import inspect
from typing import Optional

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

__all__ = ["LocalGeneratorBuilder"]


class LocalGeneratorBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """``GeneratorBasedBuilder`` for data generated locally (no downloads)."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> Optional[epath.Path]:  # type: ignore[override]
        try:
            return epath.Path(inspect.getfile(cls))
        except (TypeError, OSError):  # pragma: no cover - class defined interactively
            return None

    def download_and_prepare(self, **kwargs) -> None:
        """Generate the data into ``data_dir`` unless it is already there (quietly)."""
        from tensorflow_datasets.core.utils import tqdm_utils

        previous = getattr(tqdm_utils, "_active", True)
        tfds.display_progress_bar(False)
        try:
            super().download_and_prepare(**kwargs)
        finally:
            tfds.display_progress_bar(previous)

    def _log_download_bytes(self) -> None:
        logging.info("Generating dataset %s into %s", self.info.full_name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("Dataset %s prepared in %s", self.info.full_name, self.data_dir)

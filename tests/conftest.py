"""Shared test setup: quiet TensorFlow, two CPU threads, a fresh Keras session per test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import gc  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

# TensorFlow's and Keras' own objects live as long as the session: out of the collector's way
gc.freeze()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir for the session, as ``NESTED_RESEARCH_DATA_DIR`` (the environment's,
    if it names one): the embedded datasets are prepared into it once, on first use."""
    previous = os.environ.get("NESTED_RESEARCH_DATA_DIR")
    path = previous or str(tmp_path_factory.mktemp("data_dir"))
    os.environ["NESTED_RESEARCH_DATA_DIR"] = path
    yield path
    if previous is None:
        os.environ.pop("NESTED_RESEARCH_DATA_DIR", None)


_TESTS_SINCE_COLLECTION = [0]
#: Tests between full garbage collections: one per test (Keras' clear_session default) costs
#: about a second each on this heap, none at all lets dead functions and graphs pile up.
COLLECT_EVERY = 10


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    keras.backend.clear_session(free_memory=False)
    _TESTS_SINCE_COLLECTION[0] += 1
    if _TESTS_SINCE_COLLECTION[0] >= COLLECT_EVERY:
        _TESTS_SINCE_COLLECTION[0] = 0
        gc.collect()
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")

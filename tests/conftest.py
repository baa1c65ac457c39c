"""Shared test setup: quiet TensorFlow, two CPU threads, a fresh Keras session per test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")

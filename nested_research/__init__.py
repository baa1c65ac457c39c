"""nested-research: a research framework around the Nested Learning optimizer.

``from nested_research import NestedLearningOptimizer`` gives the optimizer;
the trainer is ``python -m nested_research.train`` (Hydra, configs in ``conf/``).
TensorFlow is imported on first use of a name below, so tools that need no
TensorFlow (the local sweep runner) start fast.

A quiet console: ``TF_CPP_MIN_LOG_LEVEL`` defaults to ``2`` (TensorFlow's C++
INFO and WARNING lines hidden, errors shown; a value already in the environment
wins), and the first ``import tensorflow`` is held to it too (:mod:`.tf_log`).
"""

import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from nested_research import tf_log  # noqa: E402

tf_log.install()

_EXPORTS = {
    "AdEMAMix": "nested_research.ademamix",
    "DeltaMomentum": "nested_research.delta_momentum",
    "M3": "nested_research.m3",
    "NestedLearningOptimizer": "nested_research.optimizer",
    "PerEpochSchedule": "nested_research.lr_schedule",
    "WarmupCosineSchedule": "nested_research.lr_schedule",
}

__all__ = list(_EXPORTS)
__version__ = "0.2.0"


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nested_research' has no attribute {name!r}")

"""nested-research: a research framework around the Nested Learning optimizer.

``from nested_research import NestedLearningOptimizer`` gives the optimizer;
the trainer is ``python -m nested_research.train`` (Hydra, configs in ``conf/``).
TensorFlow is imported on first use of a name below, so tools that need no
TensorFlow (the local sweep runner) start fast.
"""

import importlib

_EXPORTS = {
    "NestedLearningOptimizer": "nested_research.optimizer",
    "PerEpochSchedule": "nested_research.lr_schedule",
    "WarmupCosineSchedule": "nested_research.lr_schedule",
}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nested_research' has no attribute {name!r}")

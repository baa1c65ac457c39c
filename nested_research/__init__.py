"""nested-research: a research framework around the Nested Learning optimizer.

``from nested_research import NestedLearningOptimizer`` gives the optimizer;
the trainer is ``python -m nested_research.train`` (Hydra, configs in ``conf/``).
"""

from nested_research.lr_schedule import PerEpochSchedule, WarmupCosineSchedule
from nested_research.optimizer import NestedLearningOptimizer

__all__ = ["NestedLearningOptimizer", "PerEpochSchedule", "WarmupCosineSchedule"]
__version__ = "0.1.0"

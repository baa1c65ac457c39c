"""The Nested Learning optimizer, its Keras shell (:mod:`.optimizer`) and its update rule's
parts, each pure functions of tensors: the memory tiers and retrieval (:mod:`.memory`), per-layer
update intervals (:mod:`.intervals`) from model depths (:mod:`.depths`), low-rank gradient
compression (:mod:`.compression`), the state layout (:mod:`.state_layout`), and the in-step
statistics it records (:mod:`.recorder`) and reads per layer (:mod:`.layer_stats`).
"""

from nested_research.optimizers.nested.optimizer import NestedLearningOptimizer

__all__ = ["NestedLearningOptimizer"]

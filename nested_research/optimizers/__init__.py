"""The optimizer family: one module per optimizer over one shared shell.

:mod:`.family` is the shell, :class:`FamilyOptimizer` (typed parameters, ``skip_nonfinite``,
``get_config``); :mod:`.protocols` declares what the trainer and the tracker may ask of
an optimizer (its state by name, depth scheduling, in-step statistics); :mod:`.nonfinite` is the one
NaN/inf step decision, :mod:`.schedules` the learning-rate schedules, :mod:`.sparse` the
row-sparse gradient helpers.  :mod:`.nested` holds the Nested Learning optimizer and its parts;
:mod:`.ademamix`, :mod:`.m3` and :mod:`.delta_momentum` its multi-timescale relatives.
Imports only :mod:`nested_research.core` (and Keras).
"""

from nested_research.optimizers.ademamix import AdEMAMix
from nested_research.optimizers.delta_momentum import DeltaMomentum
from nested_research.optimizers.family import FamilyOptimizer
from nested_research.optimizers.m3 import M3
from nested_research.optimizers.nested import NestedLearningOptimizer
from nested_research.optimizers.protocols import (ConvertsSavedState, DepthScheduled, RecordsStats,
                                                  StatefulOptimizer)
from nested_research.optimizers.schedules import PerEpochSchedule, WarmupCosineSchedule

__all__ = ["AdEMAMix", "ConvertsSavedState", "DeltaMomentum", "DepthScheduled", "FamilyOptimizer",
           "M3", "NestedLearningOptimizer", "PerEpochSchedule", "RecordsStats", "StatefulOptimizer",
           "WarmupCosineSchedule"]

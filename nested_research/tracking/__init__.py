"""Experiment tracking: the trackers a job is given (:mod:`.trackers`: the :class:`Tracker`
protocol a job calls; W&B, offline by default, or none) with their typed settings
(:mod:`.settings`), the Keras callback that logs a run (:mod:`.callback`) and what it reads of the
optimizer (:mod:`.probes`, :mod:`.state_norms`, :mod:`.schedule_report`), the rows' way to W&B
(:mod:`.rows`) and an offline W&B run read back (:mod:`.reader`).  Imports the optimizers and
core, never training.
"""

from nested_research.tracking.trackers import NullTracker, Tracker, WandbTracker

__all__ = ["NullTracker", "Tracker", "WandbTracker"]

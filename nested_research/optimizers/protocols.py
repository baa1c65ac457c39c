"""What the trainer and the tracker may ask of an optimizer, declared once.

Every optimizer of the family (``family.FamilyOptimizer``) names its state per trainable
variable (:class:`StatefulOptimizer`).  The Nested Learning optimizer also schedules layers by
depth (:class:`DepthScheduled`), records statistics inside its step (:class:`RecordsStats`)
and reads the state of an older layout (:class:`ConvertsSavedState`).  The protocols are
``runtime_checkable``: a caller tests membership with ``isinstance`` and then calls the
members; a Keras optimizer (Adam) is simply not a member.  Python 3.10 and 3.11 test a
protocol's attributes by reading them, so every member can be read before the optimizer is
built.  :func:`base_optimizer` unwraps Keras' ``LossScaleOptimizer`` (mixed precision).
"""

from __future__ import annotations

from typing import ContextManager, Mapping, Protocol, runtime_checkable

import keras


def base_optimizer(optimizer):
    """The optimizer under a ``LossScaleOptimizer`` wrapper, if any."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


@runtime_checkable
class StatefulOptimizer(Protocol):
    """An optimizer whose state the tracker reads by name (``tracking/state_norms.py``)."""

    #: ``slots`` names -> the family-wide state roles (``fast``, ``medium``, ``slow``,
    #: ``second``).
    STATE_ROLES: Mapping[str, str]

    @property
    def model_variables(self) -> list:
        """The trainable variables the optimizer updates, in its order (after ``build``)."""

    def slots(self, index: int) -> dict:
        """The state of trainable variable ``index`` by name (tensors or ``None``)."""


@runtime_checkable
class DepthScheduled(Protocol):
    """An optimizer that updates each layer at an interval set by its depth."""

    auto_schedule: bool

    def compute_depths_from_model(self, model) -> dict[str, int]:
        """Assign every trainable variable of ``model`` its depth (before the first step)."""

    def planned_intervals(self, var_list) -> list[int]:
        """The intervals ``var_list`` would get if the optimizer were built on it now."""

    @property
    def longest_interval(self) -> int:
        """The largest update interval of any variable (1 before the optimizer is built)."""


@runtime_checkable
class RecordsStats(DepthScheduled, Protocol):
    """An optimizer that records per-variable statistics inside its step every
    ``stats_every`` steps (0: never); the trainer traces its step with and without
    (``training/stats_window.py``), the tracker reads them (``memory_stats``)."""

    stats_every: int

    def stats_recording(self, record: bool) -> ContextManager:
        """A context in which the traced step records statistics on every step, or none."""

    def memory_stats(self) -> dict[str, dict]:
        """Per-layer statistics ``{layer path: {field: value}}``."""


@runtime_checkable
class ConvertsSavedState(Protocol):
    """An optimizer whose saved state may come in an earlier layout (``trainer.resume``)."""

    def convert_saved_state(self, arrays: list) -> list:
        """Saved values of ``variables`` in the current layout; ``ValueError`` if they fit
        no layout."""

"""Steps trained, counted on the host from the batch indices Keras' callbacks receive.

``on_train_batch_end(batch, logs)`` gets the index (0-based, within the epoch)
of the last batch of the call; with ``steps_per_execution > 1`` one call
trains several batches.  Every callback that counts steps does it with a
:class:`StepCounter`::

    def on_epoch_begin(self, epoch, logs=None):
        self.counter.on_epoch_begin()

    def on_train_batch_end(self, batch, logs=None):
        n = self.counter.advance(batch)   # steps this call trained (>= 1)
"""

from __future__ import annotations


class StepCounter:
    """Steps trained per ``on_train_batch_end`` call, from the epoch's batch indices."""

    def __init__(self):
        self._last_batch = -1

    def on_epoch_begin(self) -> None:
        """A new epoch: batch indices start again at 0."""
        self._last_batch = -1

    def advance(self, batch) -> int:
        """The steps trained since the previous call (at least 1), up to batch ``batch``."""
        n = max(int(batch) - self._last_batch, 1)
        self._last_batch = int(batch)
        return n

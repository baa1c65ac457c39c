"""The way a W&B row takes from the tracking callback to ``run.log``.

:class:`AsyncLog` hands the rows to ``run.log`` on a background thread.
:class:`RowJournal` keeps W&B continuous across a resume, no step logged twice
and none lost: W&B writes its files asynchronously, so a killed process loses
the last rows it logged.  The journal keeps the newest rows (checkpoints store
them, ``checkpoint.Checkpoint.rows``) and, in a resumed run, drops the rows
whose ``trainer/step`` (``trainer/epoch``) the run's local W&B files already
hold (:func:`logged_extent`); the resumed run first logs the checkpoint's rows
that those files lack, so each step appears exactly once.
"""

from __future__ import annotations

import json
import os
import warnings

#: W&B rows (the newest) that a checkpoint carries, to re-log what a killed process lost.
ROWS_KEPT = 512


def logged_extent(wandb_dir: str, run_id: str) -> tuple[int, int]:
    """The largest ``trainer/step`` (step rows) and ``trainer/epoch`` (epoch rows) that the
    local files of W&B run ``run_id`` under ``wandb_dir`` hold (``-1`` when none)."""
    import glob

    from nested_research.tracking.reader import _key, iter_records

    max_step = max_epoch = -1
    pattern = os.path.join(glob.escape(wandb_dir), "wandb", f"*-{glob.escape(run_id)}",
                           f"run-{glob.escape(run_id)}.wandb")
    for log in glob.glob(pattern):
        try:
            for record in iter_records(log):
                if record.WhichOneof("record_type") != "history":
                    continue
                row = {"/".join(_key(item)): item.value_json for item in record.history.item}
                if "trainer/epoch" in row:
                    max_epoch = max(max_epoch, int(float(json.loads(row["trainer/epoch"]))))
                elif "trainer/step" in row:
                    max_step = max(max_step, int(float(json.loads(row["trainer/step"]))))
        except (OSError, ValueError) as err:  # a damaged tail: what was read counts
            warnings.warn(f"W&B file {log}: read up to a damaged record ({err})", stacklevel=2)
    return max_step, max_epoch


class RowJournal:
    """Wraps a tracker's ``log``: drops rows the W&B run already holds, remembers the rest.

    ``max_step``/``max_epoch``: the largest ``trainer/step`` (step rows) and
    ``trainer/epoch`` (epoch rows) already in the run's files (``logged_extent``;
    ``-1`` for a new run).  The newest ``keep`` rows passed on are kept
    (``rows``): checkpoints store them, because W&B writes its files
    asynchronously and a killed process loses the last rows it logged; a resumed
    run logs the stored rows that its W&B files lack before it trains.
    """

    def __init__(self, log, max_step: int = -1, max_epoch: int = -1, keep: int = ROWS_KEPT):
        import collections

        self.log, self.max_step, self.max_epoch = log, int(max_step), int(max_epoch)
        self.rows = collections.deque(maxlen=int(keep))
        self.dropped = 0

    def __call__(self, row: dict) -> None:
        if "trainer/epoch" in row:
            seen = row["trainer/epoch"] <= self.max_epoch
        else:
            seen = row.get("trainer/step", self.max_step + 1) <= self.max_step
        if seen:
            self.dropped += 1
            return
        self.rows.append(dict(row))
        self.log(row)


class AsyncLog:
    """Hands rows to ``log`` (``run.log``) on a background thread, in order.

    ``run.log`` is a round trip to W&B's service thread (a few hundred
    microseconds, more while training keeps the cores busy); the training
    thread only queues the row.  ``flush()`` waits until every queued row is
    logged; errors are kept and re-raised by ``flush``.
    """

    def __init__(self, log, maxsize: int = 10000):
        import queue
        import threading

        self._log = log
        self._queue = queue.Queue(maxsize=maxsize)
        self._error = None
        self._thread = threading.Thread(target=self._work, name="wandb-log", daemon=True)
        self._thread.start()

    def _work(self):
        import threading

        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self._log(item)
            except Exception as err:  # noqa: BLE001 - reported by flush()
                self._error = err

    def __call__(self, row: dict) -> None:
        self._queue.put(row)

    def flush(self, timeout: float | None = None) -> None:
        import threading

        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self, timeout: float | None = 60) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

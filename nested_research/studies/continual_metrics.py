"""Continual-learning metrics from the accuracy matrix of one run.

``R`` (argument ``accuracy``) is ``T x T`` with ``R[i, j]`` the accuracy on task ``j``'s test
data after training on tasks ``0..i`` in order (rows: training progress, columns: tasks),
``T >= 2``, every entry in ``[0, 1]``.  Indices are 0-based; ``T - 1`` is the last task.

ACC, average accuracy (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual
Learning", section 4)
    ``ACC = 1/T sum_{j=0}^{T-1} R[T-1, j]``: the mean of the last row.
BWT, backward transfer (same paper, same section)
    ``BWT = 1/(T-1) sum_{j=0}^{T-2} (R[T-1, j] - R[j, j])``: how training the later tasks
    changed each earlier task's accuracy from the moment it was learnt (negative:
    forgetting).  The last task (``j = T-1``) is left out, its term being 0 by definition.
average forgetting (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning", their
``F_k`` at the end of training, ``k = T-1``)
    ``f_j = max_{i in {j, ..., T-2}} R[i, j] - R[T-1, j]`` for ``j = 0..T-2``, and
    ``F = 1/(T-1) sum_{j=0}^{T-2} f_j``: the best accuracy task ``j`` had at any point after it
    was learnt and before the last task, minus its final accuracy.  The maximum starts at
    ``i = j`` (rows before task ``j`` was trained on measure an unseen task, not knowledge
    that could be forgotten); Chaudhry et al. take it over every earlier row, which equals this
    wherever an unseen task's accuracy is below its learnt one.  ``f_j`` is negative when the
    final accuracy is the best one (later tasks helped); it is not clipped at 0.
learning accuracy (Riemer et al. 2019, "Learning to Learn without Forgetting by Maximizing
Transfer and Minimizing Interference", LA)
    ``LA = 1/T sum_{j=0}^{T-1} R[j, j]``: the mean of the diagonal, each task's accuracy right
    after training on it (plasticity, apart from forgetting).

Identity used in the tests: ``ACC = LA + (T-1)/T * BWT``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_accuracy_matrix", "average_accuracy", "backward_transfer",
           "average_forgetting", "forgetting_per_task", "learning_accuracy", "summary"]


def check_accuracy_matrix(accuracy: Any, name: str = "R") -> np.ndarray:
    """``accuracy`` as a ``float64`` array, or ``ValueError`` naming ``name``, the value and what
    is allowed: a square ``T x T`` matrix, ``T >= 2``, every entry a finite number in
    ``[0, 1]``."""
    try:
        r = np.asarray(accuracy, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={accuracy!r} must be a square T x T matrix of accuracies "
                         f"in [0, 1] with T >= 2") from None
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"{name} of shape {r.shape} must be square (T x T: row i after "
                         f"training task i, column j the task evaluated)")
    if r.shape[0] < 2:
        raise ValueError(f"{name} of shape {r.shape} must have at least 2 tasks (T >= 2)")
    bad = ~np.isfinite(r) | (r < 0) | (r > 1)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(f"{name}[{i}, {j}]={float(r[i, j])!r} must be an accuracy in [0, 1]")
    return r


def average_accuracy(accuracy: Any) -> float:
    """ACC: the mean of the last row, ``1/T sum_j R[T-1, j]``."""
    r = check_accuracy_matrix(accuracy)
    return float(r[-1].mean())


def backward_transfer(accuracy: Any) -> float:
    """BWT (GEM): ``1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])``."""
    r = check_accuracy_matrix(accuracy)
    t = r.shape[0]
    return float(np.mean(r[-1, : t - 1] - np.diag(r)[: t - 1]))


def forgetting_per_task(accuracy: Any) -> np.ndarray:
    """``f_j = max_{j <= i <= T-2} R[i, j] - R[T-1, j]`` for ``j = 0..T-2`` (length ``T-1``)."""
    r = check_accuracy_matrix(accuracy)
    t = r.shape[0]
    return np.array([r[j: t - 1, j].max() - r[-1, j] for j in range(t - 1)])


def average_forgetting(accuracy: Any) -> float:
    """Average forgetting (Chaudhry et al. 2018): the mean of :func:`forgetting_per_task`."""
    return float(forgetting_per_task(accuracy).mean())


def learning_accuracy(accuracy: Any) -> float:
    """Learning accuracy: the mean of the diagonal, ``1/T sum_j R[j, j]``."""
    r = check_accuracy_matrix(accuracy)
    return float(np.diag(r).mean())


def summary(accuracy: Any) -> dict:
    """All four metrics of one run: ``acc``, ``bwt``, ``forgetting``, ``learning_accuracy``,
    and ``tasks`` (``T``)."""
    r = check_accuracy_matrix(accuracy)
    return {"tasks": int(r.shape[0]), "acc": average_accuracy(r), "bwt": backward_transfer(r),
            "forgetting": average_forgetting(r), "learning_accuracy": learning_accuracy(r)}

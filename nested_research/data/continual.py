"""Continual-learning task sequences made from an existing dataset (arrays or ``tf.data``).

Class-incremental split (e.g. split digits, van de Ven & Tolias 2019, "Three scenarios for
continual learning")
    ``tasks`` is a list of class lists, ``tasks[t]`` the labels of task ``t``, e.g. digits in 5
    tasks of 2 classes: ``[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]``
    (:func:`split_classes`).  Task ``t`` holds exactly the examples with ``y in tasks[t]``, in
    their original order.  One shared head: labels are left unchanged (task 1's classes stay
    2 and 3 of a 10-way output), so nothing tells the model which task an example is from.
Domain-incremental permuted inputs (permuted MNIST, Goodfellow et al. 2013; here mnist1d)
    one permutation ``pi_t`` of the ``F`` input features per task (``F`` = the product of an
    example's shape): task ``t``'s input is ``x_t[..., k] = x_flat[pi_t[k]]``, reshaped back;
    labels and the set of examples are the same for every task.  **Task 0 is the identity**
    (the original data) unless ``identity_first=False``; the other permutations are drawn with
    ``np.random.default_rng(seed).permutation(F)`` in task order (with ``identity_first``, the
    first draw goes to task 1), a draw equal to an earlier task's permutation being drawn again,
    so the permutations are fixed by ``seed`` and differ between tasks.

Bad input stops with one line naming the key (``continual.tasks``, ``continual.n_tasks``, ...),
the value and what is allowed: fewer than 2 tasks, an empty task, a class the dataset lacks,
a class in two tasks.

TensorFlow is imported only by the ``tf.data`` functions.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from nested_research.core.checks import check_bool, check_int

__all__ = ["check_class_tasks", "split_classes", "class_incremental_arrays",
           "class_incremental_datasets", "feature_permutations", "permuted_arrays",
           "permuted_dataset"]

TASKS_KEY = "continual.tasks"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_class_tasks(tasks: Any, classes: Iterable[int],
                      key: str = TASKS_KEY) -> tuple[tuple[int, ...], ...]:
    """``tasks`` as a tuple of tuples of ``int``, or ``ValueError`` naming ``key``: at least 2
    tasks, each a non-empty list of integer labels from ``classes`` (the dataset's labels), no
    label in two tasks (nor twice in one)."""
    known = sorted({int(c) for c in classes})
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or len(tasks) < 2:
        raise ValueError(f"{key}={tasks!r} must be a list of at least 2 tasks, "
                         f"each a list of class labels")
    seen: dict[int, int] = {}
    out = []
    for t, task in enumerate(tasks):
        if isinstance(task, (str, bytes)) or not isinstance(task, Sequence) or len(task) == 0:
            raise ValueError(f"{key}[{t}]={task!r} must be a non-empty list of class labels")
        for c in task:
            if not _is_int(c):
                raise ValueError(f"{key}[{t}]={list(task)!r} must hold integer class labels: "
                                 f"{c!r} is not one")
            if int(c) not in known:
                raise ValueError(f"{key}[{t}]={list(task)!r} must name classes the dataset has "
                                 f"({_classes_text(known)}): {int(c)} is not one")
            if int(c) in seen and seen[int(c)] == t:
                raise ValueError(f"{key}[{t}]={list(task)!r} must not repeat a class: "
                                 f"{int(c)} is twice")
            if int(c) in seen:
                raise ValueError(f"{key}={_plain(tasks)!r} must not share a class between "
                                 f"tasks: {int(c)} is in tasks {seen[int(c)]} and {t}")
            seen[int(c)] = t
        out.append(tuple(int(c) for c in task))
    return tuple(out)


def _plain(tasks) -> list:
    return [[int(c) if _is_int(c) else c for c in task] for task in tasks]


def _classes_text(known: list[int]) -> str:
    if known and known == list(range(known[0], known[-1] + 1)) and len(known) > 2:
        return f"{known[0]}..{known[-1]}"
    return ", ".join(str(c) for c in known) or "none"


def split_classes(num_classes: int, per_task: int) -> list[list[int]]:
    """``[[0, .., per_task-1], [per_task, ..], ...]``: ``num_classes / per_task`` tasks of
    consecutive labels (``split_classes(10, 2)`` is split digits)."""
    num_classes = check_int("continual.num_classes", num_classes, low=2)
    per_task = check_int("continual.classes_per_task", per_task, low=1)
    if num_classes % per_task or num_classes // per_task < 2:
        raise ValueError(f"continual.classes_per_task={per_task!r} must divide "
                         f"num_classes={num_classes} into at least 2 tasks")
    return [list(range(s, s + per_task)) for s in range(0, num_classes, per_task)]


def class_incremental_arrays(x: np.ndarray, y: np.ndarray, tasks: Any,
                             key: str = TASKS_KEY) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(x_t, y_t), ...]``: per task the examples whose label is in ``tasks[t]``, in order,
    labels unchanged; the dataset's classes are the labels present in ``y``."""
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"y of shape {y.shape} must be one label per example of x "
                         f"(x has {len(x)})")
    checked = check_class_tasks(tasks, np.unique(y), key)
    return [(x[mask], y[mask]) for mask in (np.isin(y, task) for task in checked)]


def class_incremental_datasets(dataset, tasks: Any, classes: Iterable[int],
                               key: str = TASKS_KEY) -> list:
    """One ``tf.data.Dataset`` per task from ``dataset`` of **unbatched** ``(x, y)`` pairs
    (batch afterwards): the pairs with ``y in tasks[t]``.  ``classes`` are the dataset's
    labels (e.g. ``range(num_classes)``), checked against ``tasks`` before anything runs."""
    import tensorflow as tf

    checked = check_class_tasks(tasks, classes, key)

    def keep(labels):
        allowed = tf.constant(labels, dtype=tf.int64)
        return lambda x, y: tf.reduce_any(tf.equal(tf.cast(y, tf.int64), allowed))

    return [dataset.filter(keep(task)) for task in checked]


def feature_permutations(n_features: int, n_tasks: int, seed: int,
                         identity_first: bool = True) -> np.ndarray:
    """``(n_tasks, n_features)`` integer array, row ``t`` the permutation ``pi_t`` of task
    ``t`` (identity first by default; see the module docstring), distinct rows, fixed by
    ``seed``."""
    n_features = check_int("continual.n_features", n_features, low=2)
    n_tasks = check_int("continual.n_tasks", n_tasks, low=2)
    seed = check_int("continual.seed", seed, low=0)
    identity_first = check_bool("continual.identity_first", identity_first)
    if n_features <= 12 and math.factorial(n_features) < n_tasks:
        raise ValueError(f"continual.n_tasks={n_tasks!r} must be at most {n_features}! = "
                         f"{math.factorial(n_features)}, the distinct permutations of "
                         f"{n_features} features")
    rng = np.random.default_rng(seed)
    perms = [np.arange(n_features)] if identity_first else []
    seen = {tuple(p) for p in perms}
    while len(perms) < n_tasks:
        p = rng.permutation(n_features)
        if tuple(p) not in seen:
            seen.add(tuple(p))
            perms.append(p)
    return np.stack(perms).astype(np.int64)


def _check_permutations(permutations: Any, n_features: int) -> np.ndarray:
    p = np.asarray(permutations)
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != n_features or \
            any(sorted(row) != list(range(n_features)) for row in p.tolist()):
        raise ValueError(f"continual.permutations of shape {p.shape} must be permutations of "
                         f"the {n_features} input features (rows of 0..{n_features - 1})")
    return p


def permuted_arrays(x: np.ndarray, permutations: Any) -> list[np.ndarray]:
    """Task ``t``'s inputs: every example of ``x`` (shape ``(N, ...)``) with its ``F`` features
    flattened, reordered by ``permutations[t]`` (``x_t[:, k] = x[:, pi_t[k]]``) and reshaped
    back.  Labels are unchanged: use the same ``y`` for every task."""
    x = np.asarray(x)
    n_features = int(np.prod(x.shape[1:]))
    perms = _check_permutations(permutations, n_features)
    flat = x.reshape(len(x), n_features)
    return [flat[:, p].reshape(x.shape) for p in perms]


def permuted_dataset(dataset, permutation: Any):
    """``dataset`` of ``(x, y)`` pairs, batched or not, with each example's features reordered
    by one permutation ``pi`` (``x'[..., k] = x_flat[pi[k]]``, shape kept, labels kept)."""
    import tensorflow as tf

    shape = dataset.element_spec[0].shape
    n_features = len(np.asarray(permutation).ravel())
    perm = tf.constant(_check_permutations(permutation, n_features)[0], dtype=tf.int64)
    if shape.rank is not None and shape.num_elements() != n_features and \
            (shape.rank < 1 or shape[1:].num_elements() not in (None, n_features)):
        raise ValueError(f"continual.permutations of length {n_features} must match the "
                         f"features of one example (x has shape {shape})")

    def apply(x, y):
        flat = tf.reshape(x, [-1, n_features])
        return tf.reshape(tf.gather(flat, perm, axis=1), tf.shape(x)), y

    return dataset.map(apply, num_parallel_calls=tf.data.AUTOTUNE)

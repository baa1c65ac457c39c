"""Continual-learning task sequences: class-incremental splits and permuted inputs, on small
NumPy arrays and scikit-learn's digits (no TFDS data needed)."""

import numpy as np
import pytest

from nested_research.data import continual as C


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32)[..., None] / 16.0, d.target.astype(np.int64)


def test_split_classes_is_split_digits():
    assert C.split_classes(10, 2) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert C.split_classes(6, 3) == [[0, 1, 2], [3, 4, 5]]


def test_each_task_holds_exactly_its_classes_with_labels_unchanged(digits):
    x, y = digits
    tasks = C.class_incremental_arrays(x, y, C.split_classes(10, 2))
    assert len(tasks) == 5
    for t, (xt, yt) in enumerate(tasks):
        assert set(np.unique(yt)) == {2 * t, 2 * t + 1}
        mask = (y == 2 * t) | (y == 2 * t + 1)
        np.testing.assert_array_equal(xt, x[mask])       # every such example, in order
        np.testing.assert_array_equal(yt, y[mask])
    assert sum(len(yt) for _, yt in tasks) == len(y)


def test_uneven_and_partial_splits():
    x = np.arange(12).reshape(6, 2)
    y = np.array([0, 1, 2, 0, 3, 2])
    (x0, y0), (x1, y1) = C.class_incremental_arrays(x, y, [[2], [0, 3]])
    np.testing.assert_array_equal(y0, [2, 2])
    np.testing.assert_array_equal(x0, [[4, 5], [10, 11]])
    np.testing.assert_array_equal(y1, [0, 0, 3])         # class 1 is in no task: left out
    np.testing.assert_array_equal(x1, [[0, 1], [6, 7], [8, 9]])


@pytest.mark.parametrize("tasks, message", [
    ([[0, 1]], r"continual.tasks=\[\[0, 1\]\] must be a list of at least 2 tasks"),
    ([], r"continual.tasks=\[\] must be a list of at least 2 tasks"),
    ("01", r"continual.tasks='01' must be a list of at least 2 tasks"),
    ([[0, 1], []], r"continual.tasks\[1\]=\[\] must be a non-empty list of class labels"),
    ([[0, 1], [2, 11]], r"continual.tasks\[1\]=\[2, 11\] must name classes the dataset has "
                        r"\(0..9\): 11 is not one"),
    ([[0, 1], [1, 2]], r"continual.tasks=\[\[0, 1\], \[1, 2\]\] must not share a class "
                       r"between tasks: 1 is in tasks 0 and 1"),
    ([[0, 0], [1, 2]], r"continual.tasks\[0\]=\[0, 0\] must not repeat a class: 0 is twice"),
    ([[0, 1.5], [2]], r"continual.tasks\[0\]=\[0, 1.5\] must hold integer class labels"),
    ([[0, True], [2]], r"continual.tasks\[0\]=\[0, True\] must hold integer class labels"),
])
def test_bad_split_is_one_line_naming_key_and_value(digits, tasks, message):
    x, y = digits
    with pytest.raises(ValueError, match=message) as err:
        C.class_incremental_arrays(x, y, tasks)
    assert "\n" not in str(err.value)


def test_bad_split_names_the_callers_key():
    with pytest.raises(ValueError, match=r"data.split\[1\]=\[7\] must name classes the dataset "
                                         r"has \(0, 1, 5\): 7 is not one"):
        C.check_class_tasks([[0], [7]], [0, 1, 5], key="data.split")
    with pytest.raises(ValueError, match=r"continual.classes_per_task=3 must divide "
                                         r"num_classes=10"):
        C.split_classes(10, 3)


def test_permutations_are_fixed_by_seed_distinct_and_identity_first():
    p = C.feature_permutations(40, 5, seed=3)
    assert p.shape == (5, 40)
    np.testing.assert_array_equal(p[0], np.arange(40))       # task 0: the original data
    for row in p:
        assert sorted(row) == list(range(40))
    assert len({tuple(r) for r in p}) == 5
    np.testing.assert_array_equal(p, C.feature_permutations(40, 5, seed=3))
    assert not np.array_equal(p[1:], C.feature_permutations(40, 5, seed=4)[1:])
    # the documented draws: rng.permutation in task order, the first one to task 1
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(p[1], rng.permutation(40))
    np.testing.assert_array_equal(p[2], rng.permutation(40))
    q = C.feature_permutations(40, 3, seed=3, identity_first=False)
    np.testing.assert_array_equal(q[0], p[1])


def test_permutations_redraw_a_repeat():
    # 2 features have 2 orders: both tasks get one, identity first
    np.testing.assert_array_equal(C.feature_permutations(2, 2, seed=0), [[0, 1], [1, 0]])
    p = C.feature_permutations(3, 6, seed=0)          # every order of 3 features, once
    assert len({tuple(r) for r in p}) == 6
    with pytest.raises(ValueError, match=r"continual.n_tasks=7 must be at most 3! = 6"):
        C.feature_permutations(3, 7, seed=0)


def test_permuted_arrays_reorder_features_and_keep_shape():
    x = np.arange(2 * 2 * 3).reshape(2, 2, 3)        # 2 examples of 6 features
    perms = [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [1, 0, 2, 3, 5, 4]]
    t0, t1, t2 = C.permuted_arrays(x, perms)
    np.testing.assert_array_equal(t0, x)
    np.testing.assert_array_equal(t1, [[[5, 4, 3], [2, 1, 0]], [[11, 10, 9], [8, 7, 6]]])
    np.testing.assert_array_equal(t2[0], [[1, 0, 2], [3, 5, 4]])


def test_permuted_digits_differ_between_tasks(digits):
    x, _ = digits
    perms = C.feature_permutations(64, 5, seed=0)
    tasks = C.permuted_arrays(x, perms)
    np.testing.assert_array_equal(tasks[0], x)
    for t in range(1, 5):
        assert tasks[t].shape == x.shape and not np.array_equal(tasks[t], x)
        np.testing.assert_array_equal(tasks[t].reshape(len(x), 64),
                                      x.reshape(len(x), 64)[:, perms[t]])


@pytest.mark.parametrize("call, message", [
    (lambda: C.feature_permutations(1, 5, 0), r"continual.n_features=1 must be an integer >= 2"),
    (lambda: C.feature_permutations(40, 1, 0), r"continual.n_tasks=1 must be an integer >= 2"),
    (lambda: C.feature_permutations(40, 5, -1), r"continual.seed=-1 must be an integer >= 0"),
    (lambda: C.permuted_arrays(np.zeros((2, 3)), [[0, 1, 1]]),
     r"continual.permutations of shape \(1, 3\) must be permutations of the 3 input features"),
    (lambda: C.permuted_arrays(np.zeros((2, 4)), [[0, 1, 2]]),
     r"continual.permutations of shape \(1, 3\) must be permutations of the 4 input features"),
    (lambda: C.class_incremental_arrays(np.zeros((3, 2)), np.zeros(2), [[0], [1]]),
     r"y of shape \(2,\) must be one label per example of x \(x has 3\)"),
])
def test_bad_permutation_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_tf_data_versions_match_the_arrays():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(30, 4, 2)).astype(np.float32)
    y = rng.integers(0, 6, size=30)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    tasks = [[0, 1], [2, 3], [4, 5]]
    for (xa, ya), dt in zip(C.class_incremental_arrays(x, y, tasks),
                            C.class_incremental_datasets(ds, tasks, range(6))):
        xs, ys = zip(*dt.as_numpy_iterator())
        np.testing.assert_array_equal(np.stack(xs), xa)
        np.testing.assert_array_equal(np.array(ys), ya)
    with pytest.raises(ValueError, match=r"continual.tasks\[2\]=\[4, 6\] must name classes"):
        C.class_incremental_datasets(ds, [[0], [1], [4, 6]], range(6))
    perms = C.feature_permutations(8, 3, seed=1)
    for p, xa in zip(perms, C.permuted_arrays(x, perms)):
        unbatched = np.stack([a for a, _ in C.permuted_dataset(ds, p).as_numpy_iterator()])
        batched = np.concatenate([a for a, _ in
                                  C.permuted_dataset(ds.batch(7), p).as_numpy_iterator()])
        np.testing.assert_array_equal(unbatched, xa)
        np.testing.assert_array_equal(batched, xa)
    with pytest.raises(ValueError, match=r"continual.permutations of length 5 must match"):
        C.permuted_dataset(ds, np.arange(5))

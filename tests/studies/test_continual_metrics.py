"""Continual-learning metrics on hand-computed accuracy matrices."""

import numpy as np
import pytest

from nested_research.studies import continual_metrics as C

# 3 tasks: task 0 learnt to 0.9, drops to 0.6 then 0.5; task 1 learnt to 0.8, rises to 0.85
R3 = [[0.9, 0.1, 0.0],
      [0.6, 0.8, 0.1],
      [0.5, 0.85, 0.7]]


def test_hand_computed_three_tasks():
    assert C.average_accuracy(R3) == pytest.approx((0.5 + 0.85 + 0.7) / 3)
    # BWT: ((0.5 - 0.9) + (0.85 - 0.8)) / 2 = (-0.4 + 0.05) / 2
    assert C.backward_transfer(R3) == pytest.approx(-0.175)
    # f_0 = max(0.9, 0.6) - 0.5 = 0.4; f_1 = max(0.8) - 0.85 = -0.05 (not clipped)
    np.testing.assert_allclose(C.forgetting_per_task(R3), [0.4, -0.05])
    assert C.average_forgetting(R3) == pytest.approx(0.175)
    assert C.learning_accuracy(R3) == pytest.approx((0.9 + 0.8 + 0.7) / 3)


def test_forgetting_takes_the_best_earlier_row_not_the_diagonal():
    # task 0: 0.5 when learnt, 0.9 after task 1 (forward help), 0.3 at the end
    r = [[0.5, 0.0, 0.0], [0.9, 0.7, 0.0], [0.3, 0.7, 0.8]]
    np.testing.assert_allclose(C.forgetting_per_task(r), [0.6, 0.0])
    assert C.average_forgetting(r) == pytest.approx(0.3)
    assert C.backward_transfer(r) == pytest.approx(((0.3 - 0.5) + 0.0) / 2)
    # a row before task j was trained (R[0, 1] = 0.95, an unseen task) does not count
    r[0][1] = 0.95
    np.testing.assert_allclose(C.forgetting_per_task(r), [0.6, 0.0])


def test_no_forgetting_and_total_forgetting():
    perfect = np.ones((4, 4))
    assert C.summary(perfect) == {"tasks": 4, "acc": 1.0, "bwt": 0.0, "forgetting": 0.0,
                                  "learning_accuracy": 1.0}
    naive = np.eye(4)          # each task perfect when learnt, zero once the next one is
    s = C.summary(naive)
    assert s["acc"] == pytest.approx(0.25) and s["bwt"] == pytest.approx(-1.0)
    assert s["forgetting"] == pytest.approx(1.0) and s["learning_accuracy"] == 1.0


def test_two_tasks_and_the_identity_acc_la_bwt():
    r = [[0.8, 0.2], [0.4, 0.9]]
    assert C.summary(r) == pytest.approx({"tasks": 2, "acc": 0.65, "bwt": -0.4,
                                          "forgetting": 0.4, "learning_accuracy": 0.85})
    rng = np.random.default_rng(0)
    for t in (2, 3, 5, 8):
        m = rng.uniform(size=(t, t))
        s = C.summary(m)
        assert s["acc"] == pytest.approx(s["learning_accuracy"] + (t - 1) / t * s["bwt"])
        # independent loop reference for forgetting
        ref = np.mean([max(m[i, j] for i in range(j, t - 1)) - m[t - 1, j]
                       for j in range(t - 1)])
        assert s["forgetting"] == pytest.approx(ref)


@pytest.mark.parametrize("bad, message", [
    ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], r"R of shape \(2, 3\) must be square"),
    ([0.5, 0.5], r"R of shape \(2,\) must be square"),
    ([[0.5]], r"R of shape \(1, 1\) must have at least 2 tasks"),
    ([[0.5, 1.2], [0.3, 0.4]], r"R\[0, 1\]=1.2 must be an accuracy in \[0, 1\]"),
    ([[0.5, 0.2], [-0.1, 0.4]], r"R\[1, 0\]=-0.1 must be an accuracy in \[0, 1\]"),
    ([[0.5, 0.2], [float("nan"), 0.4]], r"R\[1, 0\]=nan must be an accuracy in \[0, 1\]"),
    ([["a", 0.2], [0.1, 0.4]], r"R=.* must be a square T x T matrix"),
])
def test_bad_matrix_is_one_line_naming_it(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        C.summary(bad)
    assert "\n" not in str(err.value)

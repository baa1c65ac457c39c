"""AlgoPerf-style scoring and the self-extending learning-rate search, on hand-made numbers."""

import math

import numpy as np
import pytest

from nested_research.studies import lr_search, scoring
from nested_research.studies.runner import Job, Outcome, summarize


def test_target_is_the_best_baselines_median_and_ignores_the_studied_optimizer():
    best = {"adam": [0.90, 0.95, 0.92], "sgd": [0.80, 0.99, 0.81], "nested": [0.99] * 3}
    assert scoring.target(best, ["adam", "sgd"], "max") == pytest.approx(0.92)
    lm = {"adam": [1.5, 1.4, 1.6], "lion": [1.45, 1.7, 1.3]}
    assert scoring.target(lm, ["adam", "lion"], "min") == pytest.approx(1.45)
    assert math.isnan(scoring.target({"adam": [math.nan]}, ["adam"], "max"))
    assert math.isnan(scoring.target({"nested": [0.9]}, ["adam"], "max"))  # no baseline yet
    # 2 seeds: the better one (what at least half of them attain); a failed seed counts
    assert scoring.target({"adam": [0.7, 0.9]}, ["adam"], "max") == 0.9
    assert scoring.target({"adam": [1.2, 1.4]}, ["adam"], "min") == 1.2
    assert math.isnan(scoring.target({"adam": [0.9, math.nan, math.nan]}, ["adam"], "max"))


def test_first_reach_and_median_with_misses():
    curve, steps = [0.5, 0.8, 0.9, 0.85], [10, 20, 30, 40]
    assert scoring.first_reach(curve, steps, 0.8, "max") == 20
    assert scoring.first_reach(curve, steps, 0.95, "max") == math.inf
    assert scoring.first_reach([3.0, 2.0, 1.0], [1, 2, 3], 2.5, "min") == 2
    assert scoring.first_reach([math.nan, 0.9], [1, 2], 0.8, "max") == 2
    # AlgoPerf's median over seeds: infinite unless at least half reach
    assert scoring.median_time([100, 300, math.inf]) == 300
    assert scoring.median_time([100, math.inf, math.inf]) == math.inf
    assert scoring.median_time([100, 200]) == 100  # half of 2 seeds: the faster
    assert scoring.median_time([100, math.inf]) == 100


def _integral(r_values, tau_max=4.0, n=30_001):
    """Midpoint-rule integral of the step function rho over [1, tau_max], normalised."""
    taus = 1.0 + (np.arange(n) + 0.5) * (tau_max - 1.0) / n
    r = np.asarray(r_values, float)
    return float(np.mean([(r <= t).mean() for t in taus]))


def test_ratios_profile_and_score_against_a_numerical_integral():
    times = {"w1": {"a": 100.0, "b": 150.0, "c": math.inf},
             "w2": {"a": 400.0, "b": 200.0, "c": 700.0},
             "w3": {"a": math.inf, "b": math.inf, "c": math.inf}}
    ratios = {w: scoring.ratios(t) for w, t in times.items()}
    assert ratios["w1"] == {"a": 1.0, "b": 1.5, "c": math.inf}
    assert ratios["w2"] == {"a": 2.0, "b": 1.0, "c": 3.5}
    assert all(r == math.inf for r in ratios["w3"].values())
    np.testing.assert_allclose(scoring.profile(ratios, "a", [1.0, 1.9, 2.0, 4.0]),
                               [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    for name in "abc":
        r = [ratios[w][name] for w in ratios]
        assert scoring.score(ratios, name) == pytest.approx(_integral(r), abs=2e-3)
    # exact: a = (3 + 2) / 3 / 3, b = (2.5 + 3) / 3 / 3, c = 0.5 / 3 / 3
    assert scoring.score(ratios, "a") == pytest.approx(5 / 9)
    assert scoring.score(ratios, "b") == pytest.approx(5.5 / 9)
    assert scoring.score(ratios, "c") == pytest.approx(0.5 / 9)
    assert scoring.score(ratios, "missing") == 0.0


def test_search_extends_past_an_edge_until_the_best_is_inside():
    calls = []

    def trial(lr):  # best at lr = 1e-4: the search must walk down twice from the grid 3e-3..3e-2
        calls.append(lr)
        return -abs(math.log10(lr) + 4.0)

    found = lr_search.search(trial, 1e-2, "max")
    np.testing.assert_allclose(calls, [1e-2 / 3, 1e-2, 3e-2, 1e-2 / 9, 1e-2 / 27, 1e-2 / 81],
                               rtol=1e-5)
    assert found.best_lr == pytest.approx(1e-2 / 81, rel=1e-5)  # nearest 1e-4 on the grid
    assert len(calls) == 6 and found.at_edge  # budget spent, still at the lower edge
    inside = lr_search.search(lambda lr: -abs(math.log10(lr) + 2.5), 1e-2, "max")
    assert inside.best_lr == pytest.approx(1e-2 / 3, rel=1e-5) and not inside.at_edge
    assert len(inside.trials) == 4  # one extension down, then the best is interior
    # "min" metrics, and a failed trial (NaN) loses to any finite one
    low = lr_search.search(lambda lr: math.nan if lr > 0.02 else lr, 1e-2, "min")
    assert low.best_lr == min(low.trials) and math.isnan(low.trials[0.03])
    with pytest.raises(ValueError, match="direction='up'"):
        lr_search.search(lambda lr: 0.0, 1e-2, "up")


def _outcome(workload, label, seed, curve, steps=100, wall=10.0):
    results = {"history": {"val/accuracy": curve, "train/loss": [1.0] * len(curve)},
               "metrics": {"test/accuracy": curve[-1], "val/best_loss": 0.1},
               "steps": steps, "wall_time": wall}
    return Outcome(Job(workload, label, seed, [], lr=0.1), results)


def test_summarize_scores_each_workload_from_its_best_baseline():
    outcomes = []
    for seed in range(3):
        outcomes.append(_outcome("w", "adam", seed, [0.5, 0.8, 0.9, 0.9]))      # reaches at 75
        outcomes.append(_outcome("w", "nested", seed, [0.9, 0.9, 0.9, 0.9]))    # at 25
        outcomes.append(_outcome("w", "sgd", seed, [0.1, 0.2, 0.3, 0.4]))       # never
    rows = {r["label"]: r for r in summarize(outcomes, baselines={"adam", "sgd"})}
    assert rows["adam"]["target"] == pytest.approx(0.9)
    assert rows["nested"]["steps_to_target"] == 25 and rows["adam"]["steps_to_target"] == 75
    assert rows["sgd"]["steps_to_target"] is None and rows["sgd"]["reached"] == "0/3"
    assert rows["adam"]["ratio_to_best"] == 3.0 and rows["nested"]["ratio_to_best"] == 1.0
    assert rows["adam"]["seconds_to_target"] == pytest.approx(7.5)
    assert rows["nested"]["score"] == 1.0 and rows["adam"]["score"] == pytest.approx(1 / 3)
    assert rows["sgd"]["score"] == 0.0

"""Paired differences against the reference with a bootstrap interval, on hand-made numbers and
against a NumPy reference drawn with the same generator."""

import math

import numpy as np
import pytest

from nested_research.studies import paired as P


def _numpy_interval(d, n_resamples=P.N_RESAMPLES, seed=P.BOOTSTRAP_SEED):
    """Independent few-line reference: a loop of resamples from the same generator."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_resamples, len(d)))
    means = [sum(d[i] for i in row) / len(d) for row in idx]
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


def test_identical_arms_give_zero_and_level():
    arm = {0: 0.91, 1: 0.88, 2: 0.95}
    r = P.paired(arm, dict(arm), "max", workload="digits", optimizer="m3")
    assert (r.n, r.seeds, r.mean_diff, r.low, r.high) == (3, (0, 1, 2), 0.0, 0.0, 0.0)
    assert r.verdict == "level"
    assert r.text() == "+0.000 [+0.000, +0.000] level (n=3)"


@pytest.mark.parametrize("shift, direction, expected", [
    (0.05, "max", "ahead"), (-0.05, "max", "behind"),
    (-0.05, "min", "ahead"), (0.05, "min", "behind")])
def test_constant_shift_gives_a_zero_width_interval_and_the_verdict_follows_direction(
        shift, direction, expected):
    ref = {0: 0.5, 1: 0.7, 2: 0.6, 3: 0.8}
    mine = {s: v + shift for s, v in ref.items()}
    r = P.paired(mine, ref, direction)
    assert r.mean_diff == pytest.approx(shift)
    assert r.low == pytest.approx(shift) and r.high == pytest.approx(shift)
    assert r.high - r.low == pytest.approx(0.0, abs=1e-12)
    assert r.verdict == expected


def test_small_sample_interval_matches_numpy_reference():
    ref = {1: 0.60, 2: 0.70, 3: 0.65, 4: 0.80, 5: 0.75}
    mine = {1: 0.62, 2: 0.69, 3: 0.70, 4: 0.86, 5: 0.74}
    d = [mine[s] - ref[s] for s in sorted(ref)]
    assert d == pytest.approx([0.02, -0.01, 0.05, 0.06, -0.01])
    r = P.paired(mine, ref, "max")
    assert r.mean_diff == pytest.approx(0.022)
    low, high = _numpy_interval(d)
    assert (r.low, r.high) == (pytest.approx(low), pytest.approx(high))
    assert min(d) < r.low < r.mean_diff < r.high < max(d)
    # the interval holds 0 (low = -0.004): "level", though the mean is positive
    assert r.low == pytest.approx(-0.004) and r.high == pytest.approx(0.048)
    assert r.verdict == "level"
    assert r.text() == "+0.022 [-0.004, +0.048] level (n=5)"
    # the fixed generator: the same interval every time; a few resamples follow the seed
    assert P.bootstrap_interval(d) == (r.low, r.high)
    assert P.bootstrap_interval(d, n_resamples=7, seed=3) == pytest.approx(
        _numpy_interval(d, n_resamples=7, seed=3))


def test_positive_mean_with_an_interval_across_zero_is_level():
    ref = {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5}
    mine = {0: 0.9, 1: 0.3, 2: 0.45, 3: 0.45}   # d = 0.4, -0.2, -0.05, -0.05: mean 0.025
    r = P.paired(mine, ref, "max")
    assert r.mean_diff == pytest.approx(0.025)
    assert r.low < 0 < r.high and r.verdict == "level"


def test_two_seeds_interval_by_hand():
    # n=2, d = (0, 1): resampled means are 0, 0.5 or 1 with chances 1/4, 1/2, 1/4
    low, high = P.bootstrap_interval([0.0, 1.0])
    assert (low, high) == (0.0, 1.0)
    assert P.verdict(low, high, "max") == "level"


def test_one_paired_seed_has_no_interval_and_says_so():
    r = P.paired({0: 0.9, 1: 0.8}, {1: 0.7, 2: 0.6}, "max", optimizer="m3")
    assert (r.n, r.seeds, r.only_optimizer, r.only_reference) == (1, (1,), (0,), (2,))
    assert r.mean_diff == pytest.approx(0.1)
    assert math.isnan(r.low) and math.isnan(r.high) and r.verdict == "no interval"
    assert "fewer than 2 paired seeds: no interval" in r.note()
    assert r.text() == "+0.100 no interval (n=1)"
    assert "seeds [0] only for m3" in r.note() and "seeds [2] only for adam" in r.note()
    none = P.paired({}, {0: 0.5}, "min")
    assert none.n == 0 and math.isnan(none.mean_diff) and none.verdict == "no interval"
    assert none.text() == "no paired seeds"


def test_seeds_of_one_arm_only_and_failed_runs_are_left_out():
    ref = {0: 1.0, 1: 1.2, 2: 1.1, 3: 1.3}
    mine = {0: 0.9, 1: 1.1, 2: math.nan, 4: 0.5, 5: None}
    r = P.paired(mine, ref, "min", optimizer="lion")
    assert (r.n, r.seeds) == (2, (0, 1))
    assert r.only_optimizer == (4,) and r.only_reference == (2, 3)
    assert r.mean_diff == pytest.approx(-0.1)
    assert r.verdict == "ahead"          # both differences -0.1: lower bits per byte
    row = r.row()
    assert row["seeds"] == "0 1" and row["n"] == 2 and "n=2 paired seeds" in row["note"]


def test_against_reference_covers_every_workload_and_optimizer():
    values = {"digits": {"adam": {0: 0.9, 1: 0.8}, "m3": {0: 0.95, 1: 0.85},
                         "sgd": {0: 0.9, 1: 0.8}},
              "lm": {"adam": {0: 2.0, 1: 2.2}, "nested": {0: 2.1, 1: 2.3}}}
    out = P.against_reference(values, {"digits": "max", "lm": "min"})
    got = {(r.workload, r.optimizer): r.verdict for r in out}
    assert got == {("digits", "m3"): "ahead", ("digits", "sgd"): "level",
                   ("lm", "nested"): "behind"}


def test_values_from_rows():
    rows = [{"workload": "w", "optimizer": "adam", "seed": 0, "acc": 0.5},
            {"workload": "w", "optimizer": "adam", "seed": 1, "acc": None}]
    values = P.values_from_rows(rows, "acc")
    assert list(values) == ["w"] and values["w"]["adam"][0] == 0.5
    assert math.isnan(values["w"]["adam"][1])
    with pytest.raises(ValueError, match=r"rows\[1\].seed=0 must appear once"):
        P.values_from_rows(rows[:1] * 2, "acc")
    with pytest.raises(ValueError, match=r"rows\[0\] lacks 'loss'"):
        P.values_from_rows(rows, "loss")


@pytest.mark.parametrize("call, message", [
    (lambda: P.verdict(0.1, 0.2, "up"), r"direction='up' must be one of \('max', 'min'\)"),
    (lambda: P.verdict(0.3, 0.2, "max"), r"interval=\(0.3, 0.2\) must have low <= high"),
    (lambda: P.bootstrap_interval([1.0]), r"diffs=\[1.0\] must be at least 2 finite numbers"),
    (lambda: P.bootstrap_interval([1.0, 2.0], n_resamples=0), r"n_resamples=0 must be"),
    (lambda: P.bootstrap_interval([1.0, 2.0], confidence=1.0), r"confidence=1.0 must be"),
    (lambda: P.paired({0: "x"}, {0: 1.0}, "max", workload="w", optimizer="o"),
     r"w.o\[0\]='x' must be a number \(or None\)"),
    (lambda: P.against_reference({"w": {"sgd": {0: 1.0}}}, {"w": "max"}),
     r"reference='adam' must be an optimizer of workload 'w' \(has \['sgd'\]\)"),
    (lambda: P.against_reference({"w": {"adam": {0: 1.0}}}, {}),
     r"directions\['w'\] is missing"),
])
def test_bad_input_names_key_and_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()

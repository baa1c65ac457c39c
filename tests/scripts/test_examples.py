"""The example scripts (``scripts/examples/``) run on small data and show what they say."""

import os
import sys

import numpy as np
import pytest

from repo import SCRIPTS

EXAMPLES = str(SCRIPTS / "examples")


@pytest.fixture(autouse=True)
def _examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(EXAMPLES)
    yield
    for name in ("_data", "basic_usage", "depth_scheduling", "custom_memory",
                 "nested_vs_ademamix"):
        sys.modules.pop(name, None)


SMALL = ["--epochs", "3", "--samples", "500"]


def test_basic_usage_trains_above_chance(capsys):
    import basic_usage

    accuracy = basic_usage.main(SMALL)
    out = capsys.readouterr().out
    assert accuracy > 0.15  # 10 classes
    assert "dense_0" in out and "logits" in out and "norm_long" in out  # the memory table


def test_depth_scheduling_gives_the_documented_intervals():
    import depth_scheduling

    results = depth_scheduling.main(SMALL)
    layers = ("dense_0", "dense_1", "logits")

    def by_layer(intervals):
        return [intervals[f"{layer}/kernel"] for layer in layers]
    assert by_layer(results["automatic"][1]) == [6, 4, 1]   # cosine curve, depth 0 slowest
    assert by_layer(results["by hand"][1]) == [4, 3, 1]     # depths 0, 1, 2 registered by hand
    assert by_layer(results["patterns"][1]) == [4, 2, 1]    # first matching pattern wins
    assert results["automatic"][2]["dense_0/kernel"] == 0


def test_custom_memory_shows_each_blend_mode():
    import custom_memory

    results = custom_memory.main(SMALL)
    first = {name: next(iter(w.values())) for name, (_, w) in results.items()}
    assert first["fixed"] == pytest.approx([0.2, 0.6, 0.2])  # (recorded in float32)
    for mode in ("attention", "adaptive"):
        assert np.isclose(sum(first[mode]), 1.0) and min(first[mode]) > 0
    assert first["adaptive"] != pytest.approx([0.1, 0.3, 0.6], abs=1e-6)  # it learned
    assert first["none (Adam)"] == [None, None, None]  # no memory, no retrieval


def test_nested_and_ademamix_side_by_side_both_learn():
    import nested_vs_ademamix

    results = nested_vs_ademamix.main(SMALL)
    assert set(results) == {"nested", "ademamix"}
    for history in results.values():
        assert len(history) == 3 and history[-1] > history[0]

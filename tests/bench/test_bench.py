"""``python -m nested_research.bench.optimizer --quick``: runs end to end on tiny sizes and writes
its JSON; the HLO traffic count of its profile (:mod:`nested_research.bench.memory`)."""

import json
import os
import sys

import pytest


@pytest.fixture(scope="module")
def bench():
    from nested_research.bench import optimizer

    return optimizer


def test_quick_run_writes_the_tables(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    names = ["nested_attention", "nested_none", "nested_attention_k4"]
    bench.main(["--quick", "--out", str(out), "--optimizers", ",".join(names),
                "--sets", "dense4m", "--workloads", "cnn", "--train-modes", "graph",
                "--train-steps", "2"])
    result = json.loads(out.read_text())
    rows = ["adam"] + names
    assert result["config"]["optimizers"] == rows
    assert {"machine", "command", "optimizer", "train", "bytes", "profile"} <= set(result)
    for mode in ("graph", "xla"):
        row = result["optimizer"]["dense4m"][mode]
        assert set(row["ratio_to_adam"]) == set(rows)
        assert row["ratio_to_adam"]["adam"] == 1.0
        assert all(t > 0 for t in row["seconds"].values())
        assert len(row["times"]["nested_attention"]) == result["config"]["repeats"]
    train = result["train"]["cnn"]["graph"]
    assert set(train["ratio_to_adam"]) == {"adam", "nested_attention", "nested_none"}
    assert result["bytes"]["adam"]["dense4m"] == pytest.approx(8.0, abs=0.1)
    assert result["bytes"]["nested_attention"]["dense4m"] == pytest.approx(16.0, abs=0.1)
    prof = result["profile"]
    assert prof["adam"]["xla_1024x1024"]["words_per_param"] == pytest.approx(10.0, abs=0.5)
    assert prof["nested_attention"]["xla_1024x1024"]["words_per_param"] > \
        prof["nested_none"]["xla_1024x1024"]["words_per_param"]
    printed = capsys.readouterr().out
    assert "optimizer-only step / Adam" in printed and "training step / Adam" in printed


def test_bad_arguments_are_rejected(bench):
    with pytest.raises(SystemExit):
        bench.main(["--optimizers", "sgd"])
    with pytest.raises(SystemExit):
        bench.main(["--modes", "eager"])
    with pytest.raises(SystemExit):
        bench.main(["--workloads", "resnet"])


def test_hlo_traffic_counts_full_size_passes():
    from nested_research.bench.memory import hlo_traffic

    hlo = """HloModule m

ENTRY %e (a: f32[1024], b: f32[1024], c: f32[]) -> (f32[1024]) {
  %a = f32[1024]{0} parameter(0)
  %b = f32[1024]{0} parameter(1)
  %c = f32[] parameter(2)
  %add_fusion = f32[1024]{0} fusion(%a, %b), kind=kLoop, calls=%f
  %small = f32[] fusion(%c), kind=kLoop, calls=%g
  ROOT %tuple = (f32[1024]{0}) tuple(%add_fusion)
}
"""
    got = hlo_traffic(hlo, 1024)
    assert got["passes"] == 1 and got["words_per_param"] == pytest.approx(3.0)

"""Final test accuracy with float32 and bfloat16 optimizer state, through the training job
(:func:`accuracy_comparison`, section ``accuracy``).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from nested_research.core.configs import conf_dir


def accuracy_comparison(seeds, quick, log=print):
    """Final test accuracy with float32 and bfloat16 optimizer state (digits MLP, mnist1d CNN)."""
    from hydra import compose, initialize_config_dir
    from nested_research.training.job import run

    conf = conf_dir()
    workloads = {"digits_mlp": ["experiment=digits_mlp"],
                 "mnist1d_cnn": ["experiment=mnist1d_cnn"]}
    out = {}
    for wl, overrides in workloads.items():
        out[wl] = {}
        for dtype in ("float32", "bfloat16"):
            accs = []
            for seed in seeds:
                extra = overrides + [f"trainer.seed={seed}", "logger=none", "trainer.verbose=0",
                                     f"optimizer.params.state_dtype={dtype}"]
                if quick:
                    extra += ["trainer.epochs=1", "trainer.max_steps=5"]
                with initialize_config_dir(conf, version_base="1.3"):
                    cfg = compose("config", overrides=extra)
                with tempfile.TemporaryDirectory() as tmp:
                    run(cfg, tmp)
                    with open(os.path.join(tmp, "results.json")) as fh:
                        accs.append(float(json.load(fh)["metrics"]["test/accuracy"]))
            out[wl][dtype] = {"test_accuracy": accs, "mean": float(np.mean(accs)),
                              "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0}
            log(f"  accuracy {wl:12s} {dtype:9s} {np.mean(accs):.4f} +- "
                f"{out[wl][dtype]['std']:.4f}  {accs}", flush=True)
    return out

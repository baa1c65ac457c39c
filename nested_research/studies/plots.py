"""The studies' figures: learning curves, learning-rate sensitivity, performance profiles."""

from __future__ import annotations

import numpy as np

from nested_research.studies import scoring
from nested_research.studies.runner import final_value, metric_of


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(outcomes: list, path: str, metric: str | None = None) -> None:
    """Per workload: ``metric`` (default: the workload's own, ``study.metric_of``) per
    epoch, mean over seeds with a +-std band, per label."""
    plt = pyplot()

    workloads = sorted({o.job.workload for o in outcomes})
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 3.6), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        name = metric or metric_of(workload)[0]
        labels = sorted({o.job.label for o in outcomes if o.job.workload == workload})
        for label in labels:
            curves = [o.results["history"].get(name, []) for o in outcomes
                      if o.job.workload == workload and o.job.label == label and o.results]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves], dtype=float)
            x = np.arange(1, n + 1)
            mean, std = arr.mean(0), arr.std(0)
            ax.plot(x, mean, label=label)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_title(workload)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_lr_sensitivity(outcomes: list, path: str) -> None:
    """Per workload: the final validation metric (``study.metric_of``) against the learning
    rate, one line per optimizer: the search's trials."""
    plt = pyplot()

    workloads = sorted({o.job.workload for o in outcomes})
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 3.6), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        metric = metric_of(workload)[0]
        for label in sorted({o.job.label for o in outcomes if o.job.workload == workload}):
            pts = sorted((o.job.lr, final_value(o.results, metric))
                         for o in outcomes if o.job.workload == workload and o.job.label == label)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_title(workload)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"final {metric}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_profiles(rows: list[dict], path: str, tau_max: float = scoring.TAU_MAX) -> None:
    """The performance profiles ``rho(tau)`` (steps, and seconds) of every label over the
    workloads of ``rows`` (``study.summarize``), ``tau`` in ``[1, tau_max]``."""
    plt = pyplot()
    taus = np.linspace(1.0, tau_max, 301)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, column, title in ((axes[0], "ratio_to_best", "steps"),
                              (axes[1], "seconds_ratio_to_best", "seconds")):
        by_workload: dict = {}
        for r in rows:
            by_workload.setdefault(r["workload"], {})[r["label"]] = float(r[column])
        key = "score" if title == "steps" else "seconds_score"
        for label in sorted({r["label"] for r in rows}):
            score = next(r[key] for r in rows if r["label"] == label)
            ax.step(taus, scoring.profile(by_workload, label, taus), where="post",
                    label=f"{label} ({score:.2f})")
        ax.set_xlabel("tau (time to target / best)")
        ax.set_ylabel("fraction of workloads")
        ax.set_title(f"performance profile, {title}")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

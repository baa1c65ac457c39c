"""The end-of-run picture of the per-layer update schedule (``schedule/heatmap``,
``schedule/table`` in W&B): which layer updated at which step, and per layer its depth,
interval and applied versus expected updates.
"""

from __future__ import annotations

import numpy as np

from nested_research.optimizers.nested.intervals import applied_updates, is_update_step
from nested_research.optimizers.nested.layer_stats import Layout

#: Steps of the heatmap kept at each end of a long run.
HEATMAP_CAP = 200


def schedule_steps(total_steps: int, cap: int = HEATMAP_CAP) -> list[int]:
    """The 0-based steps the heatmap shows: all, or the first and last ``cap``."""
    if total_steps <= 2 * cap:
        return list(range(total_steps))
    return list(range(cap)) + list(range(total_steps - cap, total_steps))


def schedule_matrix(layout: Layout, steps: list[int]) -> np.ndarray:
    """``[layers, len(steps)]``: 1 where the layer applies an update at that step."""
    steps = np.asarray(steps, dtype=np.int64)
    return np.array([is_update_step(steps, layout.interval[layer], layout.warmup_steps)
                     for layer in layout.layers], dtype=np.uint8).reshape(-1, len(steps))


def render_heatmap(path: str, layout: Layout, total_steps: int,
                   cap: int = HEATMAP_CAP) -> str | None:
    """Write the layers x steps update heatmap as a PNG (matplotlib, Agg); return ``path``."""
    steps = schedule_steps(total_steps, cap)
    if not steps or not layout.layers:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    matrix = schedule_matrix(layout, steps)
    n_layers = len(layout.layers)
    fig = Figure(figsize=(min(4 + 0.06 * len(steps), 24), 1.2 + 0.35 * n_layers), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1)
    labels = [f"{layer}  (d={layout.depth[layer]}, k={layout.interval[layer]})"
              for layer in layout.layers]
    ax.set_yticks(range(n_layers), labels, fontsize=8)
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: str(steps[int(x)] + 1) if 0 <= int(x) < len(steps) else ""))
    ax.tick_params(axis="x", labelsize=8)
    if len(steps) < total_steps:
        ax.axvline(cap - 0.5, color="red", linewidth=1.5)
        ax.set_title(f"updates per layer (black = updated); steps 1-{cap} and "
                     f"{total_steps - cap + 1}-{total_steps} of {total_steps}", fontsize=9)
    else:
        ax.set_title(f"updates per layer (black = updated), steps 1-{total_steps}", fontsize=9)
    ax.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(path)
    return path


SCHEDULE_COLUMNS = ["layer", "depth", "interval", "applied_updates", "expected_updates",
                    "steps_since_update", "variables", "parameters"]


def schedule_rows(layout: Layout, stats: dict, total_steps: int) -> list[list]:
    """Rows of the per-layer schedule table (``SCHEDULE_COLUMNS``)."""

    rows = []
    for layer in layout.layers:
        row = stats.get(layer, {})
        rows.append([layer, layout.depth[layer], layout.interval[layer],
                     row.get("applied_updates"),
                     applied_updates(total_steps, layout.interval[layer], layout.warmup_steps),
                     row.get("steps_since_update"), len(layout.groups[layer]),
                     int(layout.sizes[layer].sum())])
    return rows

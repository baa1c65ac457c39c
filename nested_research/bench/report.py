"""The optimizer benchmark's report: the machine it ran on (:func:`machine`) and the printed
tables of a result (:func:`format_tables`).
"""

from __future__ import annotations

import os
import platform
import sys

from nested_research.bench.timing import backend


def machine():
    import keras

    desc = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0], "keras": keras.__version__,
            "backend": backend()}
    if backend() == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        desc.update(jax=jax.__version__, tensorflow=None, gpus=[str(d) for d in gpus])
        if gpus:
            desc["gpu_name"] = getattr(gpus[0], "device_kind", None)  # (JAX's device: if known)
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        desc.update(tensorflow=tf.__version__, gpus=[g.name for g in gpus])
        if gpus:
            try:
                desc["gpu_name"] = tf.config.experimental.get_device_details(gpus[0]).get(
                    "device_name")
            except Exception:  # informational only
                pass
    try:
        with open("/proc/cpuinfo") as fh:
            desc["cpu_model"] = next(line.split(":", 1)[1].strip() for line in fh
                                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        desc["load_average"] = os.getloadavg()
    except OSError:
        pass
    return desc


def _table(header, rows):
    widths = [max(len(str(r[j])) for r in [header] + rows) for j in range(len(header))]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa
    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + \
        [fmt(r) for r in rows]


def format_tables(result) -> str:
    lines = []
    m = result["machine"]
    lines.append(f"machine: {m.get('cpu_model', '?')}, {m['cpu_count']} cores, "
                 f"GPUs: {m.get('gpu_name') or len(m['gpus'])}; "
                 f"{'JAX ' + str(m.get('jax')) if m.get('backend') == 'jax' else 'TF ' + str(m['tensorflow'])}, "
                 f"Keras {m['keras']}; 1-minute load average (start, end) by section: "
                 f"{result.get('load_average')}")
    cfg = result["config"]
    opt = result.get("optimizer", {})
    if opt:
        cols = [(s, md) for s in opt for md in cfg["modes"]]
        header = ["optimizer-only step / Adam"] + [f"{s} {md}" for s, md in cols]
        rows = [[n] + [f"{opt[s][md]['ratio_to_adam'][n]:.2f}" for s, md in cols]
                for n in cfg["optimizers"]]
        rows.append(["(Adam, ms per step)"] + [f"{1e3 * opt[s][md]['seconds']['adam']:.2f}"
                                               for s, md in cols])
        lines += [""] + _table(header, rows)
    tr = result.get("train", {})
    if tr:
        cols = [(w, md) for w in tr for md in cfg["train_modes"]]
        header = ["training step / Adam"] + [f"{w} {md}" for w, md in cols]
        rows = [[n] + [f"{tr[w][md]['ratio_to_adam'][n]:.2f}" for w, md in cols]
                for n in cfg["train_optimizers"]]
        rows.append(["(Adam, ms per step)"] + [f"{1e3 * tr[w][md]['seconds']['adam']:.2f}"
                                               for w, md in cols])
        lines += [""] + _table(header, rows)
    by = result.get("bytes", {})
    if by:
        cols = list(next(iter(by.values())))
        header = ["state bytes / parameter"] + cols
        lines += [""] + _table(header, [[n] + [f"{by[n][c]:.2f}" for c in cols] for n in by])
    sp = result.get("sparse")
    if sp:
        header = [f"sparse gradient, {sp['rows']}x{sp['width']} table, {sp['looked_up']} rows",
                  "ratio to Adam", "ms per step"]
        lines += [""] + _table(header, [[n, f"{sp['ratio_to_adam'][n]:.2f}",
                                         f"{1e3 * sp['seconds'][n]:.2f}"] for n in sp["seconds"]])
    prof = result.get("profile", {})
    if prof:
        header = ["profile (one variable)", "XLA words/param, 1024x1024", "XLA passes, 1024x1024",
                  "XLA kernels, 64x64", "graph ops, 64x64"]
        rows = [[n, f"{p['xla_1024x1024']['words_per_param']:.1f}",
                 p["xla_1024x1024"]["passes"], p["xla_64x64"]["kernels"], p["graph_64x64"]["ops"]]
                for n, p in prof.items()]
        lines += [""] + _table(header, rows)
    acc = result.get("accuracy", {})
    if acc:
        header = ["test accuracy, 3 seeds", "float32 state", "bfloat16 state"]
        rows = [[wl] + [f"{acc[wl][d]['mean']:.4f} +- {acc[wl][d]['std']:.4f}"
                        for d in ("float32", "bfloat16")] for wl in acc]
        lines += [""] + _table(header, rows)
    return "\n".join(lines)

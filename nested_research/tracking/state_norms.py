"""Every optimizer's state under one naming scheme, per layer (the W&B ``state/`` keys).

Each optimizer keeps gradient memories on its own terms: Adam's ``m`` and
``v``, AdEMAMix's ``m1``/``m2``/``nu``, M3's fast and slow momenta, the nested
optimizer's three tiers.  Here each state tensor gets one of four *roles*, so
that a researcher sees AdEMAMix's slow EMA in the same column as the nested
long tier:

    role     what it holds                                  W&B key (per layer)
    fast     the fast first moment / momentum               layers/<layer>/state/fast_norm
    medium   a middle-timescale memory (nested medium tier)  layers/<layer>/state/medium_norm
    slow     the slow memory (AdEMAMix m2, M3 m2, long tier) layers/<layer>/state/slow_norm
    second   the second-moment estimate                      layers/<layer>/state/second_rms

``*_norm`` is the L2 norm over the layer's variables together; ``second_rms``
is ``sqrt(mean(v))`` over them (the typical per-coordinate gradient scale).
A layer gets a key only when one of its variables holds that role.

Where the roles come from:

* an optimizer of this package (``protocols.StatefulOptimizer``): ``slots(i)``
  (its state by name) and the class attribute ``STATE_ROLES`` (slot name ->
  role), declared in its module;
* a Keras optimizer: its variables named ``<variable path>_<slot>`` (the name
  ``add_variable_from_reference`` gives them), read with ``KERAS_ROLES``:
  ``momentum`` -> fast and ``velocity`` -> second (Adam, AdamW, NAdam,
  SGD with momentum, Lion, RMSprop, Muon).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from nested_research.optimizers.nested.layer_stats import layer_of
from nested_research.optimizers.protocols import StatefulOptimizer, base_optimizer

ROLES = ("fast", "medium", "slow", "second")
KEYS = {"fast": "state/fast_norm", "medium": "state/medium_norm", "slow": "state/slow_norm",
        "second": "state/second_rms"}

#: Slot-name suffixes of Keras' own optimizers and their roles.
KERAS_ROLES = {"momentum": "fast", "velocity": "second"}


def model_variables(opt) -> list:
    """The variables ``opt`` updates, in its order (after ``build``)."""
    if isinstance(opt, StatefulOptimizer):
        return list(opt.model_variables)
    return list(opt._trainable_variables)  # (a Keras optimizer: its own list)


def _keras_slots(opt) -> list[dict]:
    """Per model variable: ``{slot suffix: optimizer variable}`` by Keras' naming."""
    by_name = {v.name: v for v in opt.variables}
    out = []
    for var in model_variables(opt):
        prefix = var.path.replace("/", "_") + "_"
        out.append({name: by_name[prefix + name] for name in KERAS_ROLES
                    if prefix + name in by_name})
    return out


def roles_of(opt) -> list[dict]:
    """Per model variable: ``{role: state tensor}`` for the roles it holds."""
    opt = base_optimizer(opt)
    if isinstance(opt, StatefulOptimizer):
        per_var = [opt.slots(i) for i in range(len(model_variables(opt)))]
        table = opt.STATE_ROLES
    else:
        per_var, table = _keras_slots(opt), KERAS_ROLES
    return [{table[name]: value for name, value in slots.items()
             if name in table and value is not None} for slots in per_var]


class StateReader:
    """Per-layer state norms (module docstring), one on-device reduction per ``read()``.

    ``read()`` returns ``{layer: {"state/<role>_norm" or "state/second_rms": value}}``.
    Build it once the optimizer is built; ``calls`` counts the reads.
    """

    def __init__(self, optimizer):
        import tensorflow as tf

        self.opt = base_optimizer(optimizer)
        if not self.opt.built:
            raise RuntimeError("state norms: the optimizer is not built yet (no step taken)")
        variables = model_variables(self.opt)
        self._present = [set(r) for r in roles_of(self.opt)]
        self._sizes = np.array([max(int(np.prod(v.shape)), 1) for v in variables], np.float64)
        self._groups: "OrderedDict[str, list[int]]" = OrderedDict()
        for i, var in enumerate(variables):
            self._groups.setdefault(layer_of(var.path), []).append(i)
        self.calls = 0
        self._fn = tf.function(self._sums, autograph=False)

    def _sums(self):
        import tensorflow as tf

        zero = tf.zeros((), tf.float32)
        rows = []
        for roles in roles_of(self.opt):
            row = []
            for role in ROLES:
                if role not in roles:
                    row.append(zero)
                    continue
                x = tf.cast(roles[role], tf.float32)
                row.append(tf.reduce_sum(x) if role == "second" else tf.reduce_sum(x * x))
            rows.append(tf.stack(row))
        return tf.stack(rows) if rows else tf.zeros((0, len(ROLES)))

    def read(self) -> "OrderedDict[str, dict]":
        sums = self._fn().numpy().astype(np.float64)
        self.calls += 1
        return aggregate(sums, self._present, self._sizes, self._groups)


def aggregate(sums: np.ndarray, present: list, sizes: np.ndarray, groups: dict) -> dict:
    """Layer rows from per-variable sums (``[variables, ROLES]``: squares, or ``v``'s sum)."""
    out = OrderedDict()
    for layer, idxs in groups.items():
        row = {}
        for j, role in enumerate(ROLES):
            held = [i for i in idxs if role in present[i]]
            if not held:
                continue
            total = max(float(sums[held, j].sum()), 0.0)
            row[KEYS[role]] = math.sqrt(total / sizes[held].sum()) if role == "second" \
                else math.sqrt(total)
        out[layer] = row
    return out

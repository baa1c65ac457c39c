"""What the optimizer benchmark compares and on what: the optimizer rows (:data:`OPTIMIZERS`, the
subsets the training step and the profile run) and :func:`make_optimizer`; the variable sets of
the optimizer-only step (:func:`variable_sets`, their variables and gradients); the models of the
training step (:func:`train_workloads`).
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- optimizers
#: name -> (kind, NestedLearningOptimizer kwargs)
OPTIMIZERS = {
    "adam": ("adam", {}),
    "adamw": ("adamw", {}),
    "lion": ("lion", {}),
    "nested_none": ("nested", {"memory_blend_mode": "none"}),
    "nested_fixed": ("nested", {"memory_blend_mode": "fixed"}),
    "nested_attention": ("nested", {"memory_blend_mode": "attention"}),
    "nested_adaptive": ("nested", {"memory_blend_mode": "adaptive"}),
    "nested_attention_bf16": ("nested", {"memory_blend_mode": "attention",
                                         "state_dtype": "bfloat16"}),
    "nested_fixed_bf16": ("nested", {"memory_blend_mode": "fixed", "state_dtype": "bfloat16"}),
    # every variable on interval 4: without accumulation 3 of 4 steps run no optimizer math
    "nested_attention_k4": ("nested", {"memory_blend_mode": "attention", "auto_schedule": False,
                                       "default_interval": 4, "accumulate_gradients": False}),
    "nested_attention_k4_acc": ("nested", {"memory_blend_mode": "attention",
                                           "auto_schedule": False, "default_interval": 4,
                                           "accumulate_gradients": True}),
    # the cost of skip_nonfinite (one isfinite pass over the gradients and a cond per step)
    "nested_attention_skip": ("nested", {"memory_blend_mode": "attention",
                                         "skip_nonfinite": True}),
    "nested_fixed_skip": ("nested", {"memory_blend_mode": "fixed", "skip_nonfinite": True}),
}
TRAIN_OPTIMIZERS = ["adam", "nested_attention", "nested_fixed", "nested_none",
                    "nested_attention_bf16", "nested_attention_skip"]
PROFILE_OPTIMIZERS = ["adam", "nested_none", "nested_fixed", "nested_attention",
                      "nested_attention_bf16"]


def make_optimizer(name, learning_rate=1e-3):
    import keras
    from nested_research import NestedLearningOptimizer

    kind, kw = OPTIMIZERS[name]
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate)
    if kind == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if kind == "lion":
        return keras.optimizers.Lion(learning_rate * 0.1)
    return NestedLearningOptimizer(learning_rate=learning_rate, **kw)


# ---------------------------------------------------------------- variable sets
def dense_shapes(width=1024, layers=4):
    out = []
    for i in range(layers):
        out += [(f"dense_{i}/kernel", (width, width)), (f"dense_{i}/bias", (width,))]
    return out


def transformer_shapes(d=128, layers=8, ff=512, vocab=512, seq=64, heads=4):
    out = [("embed/embeddings", (vocab, d)), ("pos_embed/embeddings", (seq, d))]
    hd = d // heads
    for i in range(layers):
        b = f"block{i}"
        out += [(f"{b}_ln1/gamma", (d,)), (f"{b}_ln1/beta", (d,))]
        for proj in ("query", "key", "value"):
            out += [(f"{b}_attn/{proj}/kernel", (d, heads, hd)),
                    (f"{b}_attn/{proj}/bias", (heads, hd))]
        out += [(f"{b}_attn/attention_output/kernel", (heads, hd, d)),
                (f"{b}_attn/attention_output/bias", (d,)),
                (f"{b}_ln2/gamma", (d,)), (f"{b}_ln2/beta", (d,)),
                (f"{b}_mlp1/kernel", (d, ff)), (f"{b}_mlp1/bias", (ff,)),
                (f"{b}_mlp2/kernel", (ff, d)), (f"{b}_mlp2/bias", (d,))]
    out += [("final_ln/gamma", (d,)), ("final_ln/beta", (d,)),
            ("logits/kernel", (d, vocab)), ("logits/bias", (vocab,))]
    return out


def variable_sets(quick):
    if quick:
        return {"dense4m": dense_shapes(width=64, layers=2),
                "transformer": transformer_shapes(d=16, layers=1, ff=32, vocab=32, seq=8)}
    return {"dense4m": dense_shapes(), "transformer": transformer_shapes()}


def make_variables(spec, seed):
    import keras

    rng = np.random.default_rng(seed)
    return [keras.Variable((rng.normal(size=shape) * 0.02).astype("float32"),
                           name=name.replace("/", "_"))
            for name, shape in spec]


def make_grads(spec, seed):
    from keras import ops

    rng = np.random.default_rng(seed + 1)
    return [ops.convert_to_tensor((rng.normal(size=shape) * 1e-2).astype("float32"))
            for _, shape in spec]


# ---------------------------------------------------------------- training-step models
def train_workloads(quick):
    from nested_research.models import build_cnn, build_transformer

    rng = np.random.default_rng(0)
    batch = 16 if quick else 64

    def cnn():  # conf/model/cnn.yaml on mnist1d
        return build_cnn((40,), 10, filters=[32, 64, 64], kernel_size=3, dense_units=64,
                         global_pool="flatten")

    def transformer():  # conf/model/transformer.yaml
        return build_transformer((12,), 32, vocab_size=32, d_model=64, num_heads=4,
                                 num_layers=2, ff_dim=128)

    return {
        "cnn": (cnn, rng.normal(size=(batch, 40)).astype("float32"),
                rng.integers(0, 10, size=(batch,))),
        "transformer": (transformer, rng.integers(0, 32, size=(batch, 12)).astype("int32"),
                        rng.integers(0, 32, size=(batch, 12))),
    }

"""The memory: each blend mode, custom tier decays and weights, and the memory switched off.

    python scripts/examples/custom_memory.py [--epochs 20] [--samples N]
"""

import argparse

import keras

from nested_research import NestedLearningOptimizer

from _data import digits, mlp

CONFIGS = {
    # the seed's default: softmax over <g, M_i> / sqrt(n)
    "attention": dict(memory_blend_mode="attention"),
    # fixed weights, here leaning on the medium tier
    "fixed": dict(memory_blend_mode="fixed", short_term_weight=0.2, medium_term_weight=0.6,
                  long_term_weight=0.2),
    # weights learned online toward the tier that best predicts the next gradient
    "adaptive": dict(memory_blend_mode="adaptive", adaptive_rate=0.1),
    # shorter horizons (the long tier at 0.999: a 1,000-step memory), more memory in the step
    "short horizons": dict(memory_blend_mode="fixed", short_term_decay=0.9,
                           medium_term_decay=0.99, long_term_decay=0.999, memory_mix=0.75),
    # memory off: exactly keras.optimizers.Adam
    "none (Adam)": dict(memory_blend_mode="none"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--samples", type=int, default=None)
    args = p.parse_args(argv)
    x, y, x_test, y_test = digits(args.samples)
    results = {}
    for name, kwargs in CONFIGS.items():
        keras.utils.set_random_seed(0)
        model = mlp(keras)
        # stats_every: record the retrieval weights in the step, for memory_stats()
        optimizer = NestedLearningOptimizer(learning_rate=0.001, max_interval=1, stats_every=1,
                                            **kwargs)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0)
        accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
        weights = {layer: [row[f"weight_{t}"] for t in ("short", "medium", "long")]
                   for layer, row in optimizer.memory_stats().items()}
        results[name] = (accuracy, weights)
        print(f"{name:15s} test accuracy {accuracy:.3f}  retrieval weights (first layer) "
              f"{next(iter(weights.values()))}")
    return results


if __name__ == "__main__":
    main()

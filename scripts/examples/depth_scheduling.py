"""Depth-based update intervals: depths registered automatically, then by hand, then by patterns.

Depth 0 (the input side) is the slowest layer: it updates every ``max_interval`` steps and
averages its gradients over the window; the deepest layer updates every step.

    python scripts/examples/depth_scheduling.py [--epochs 20] [--samples N]
"""

import argparse

import keras

from nested_research import NestedLearningOptimizer

from _data import digits, mlp


def train(model, optimizer, data, epochs):
    x, y, x_test, y_test = data
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model.evaluate(x_test, y_test, verbose=0)[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--samples", type=int, default=None)
    args = p.parse_args(argv)
    data = digits(args.samples)
    results = {}

    # 1. automatically: depths from the model's graph, a cosine curve of intervals
    keras.utils.set_random_seed(0)
    model = mlp(keras)
    auto = NestedLearningOptimizer(learning_rate=0.001, auto_schedule=True, max_interval=6,
                                   schedule_curve="cosine")
    depths = auto.compute_depths_from_model(model)
    results["automatic"] = (train(model, auto, data, args.epochs), auto.intervals, depths)

    # 2. by hand: the input layer slowest, the output layer fastest
    keras.utils.set_random_seed(0)
    model = mlp(keras)
    manual = NestedLearningOptimizer(learning_rate=0.001, auto_schedule=True, max_interval=4)
    manual.register_layer_depth(model.get_layer("dense_0"), depth=0)    # slowest updates
    manual.register_layer_depth(model.get_layer("dense_1"), depth=1)
    manual.register_layer_depth(model.get_layer("logits"), depth=2)     # every step
    results["by hand"] = (train(model, manual, data, args.epochs), manual.intervals,
                          manual.variable_depths)

    # 3. by patterns: ordered (regex, interval) rules, first match wins
    keras.utils.set_random_seed(0)
    model = mlp(keras)
    patterns = NestedLearningOptimizer(learning_rate=0.001, auto_schedule=False,
                                       layer_update_intervals=[("dense_0/", 4), ("dense_1/", 2)],
                                       default_interval=1)
    results["patterns"] = (train(model, patterns, data, args.epochs), patterns.intervals, {})

    for name, (accuracy, intervals, _) in results.items():
        print(f"{name:10s} test accuracy {accuracy:.3f}  intervals {intervals}")
    return results


if __name__ == "__main__":
    main()

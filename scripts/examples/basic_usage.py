"""Basic usage: the Nested Learning optimizer in your own ``model.fit``.

    python scripts/examples/basic_usage.py [--epochs 20] [--samples N]
"""

import argparse

import keras

from nested_research import NestedLearningOptimizer

from _data import digits, mlp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--samples", type=int, default=None, help="use only this many examples")
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    x, y, x_test, y_test = digits(args.samples)
    model = mlp(keras)

    optimizer = NestedLearningOptimizer(learning_rate=0.001)  # the seed's defaults otherwise
    optimizer.compute_depths_from_model(model)                # per-layer intervals from depth
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    optimizer.print_memory_stats()                            # per-layer memory, intervals
    print(f"test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    main()

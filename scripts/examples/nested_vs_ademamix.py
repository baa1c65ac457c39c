"""The same model trained with the Nested Learning optimizer and with AdEMAMix, side by side.

Both mix a fast and a slow gradient memory: the nested optimizer reads three EMAs (0.94,
0.994, 0.9999) through its retrieval, AdEMAMix adds a slow EMA (beta_3 = 0.9999) to Adam's
first moment with weight alpha.  Their slow memories have 10,000-step horizons, far longer
than this example's run: see the README's Results for what the long runs show.

    python scripts/examples/nested_vs_ademamix.py [--epochs 20] [--samples N]
"""

import argparse

import keras

from nested_research import AdEMAMix, NestedLearningOptimizer

from _data import digits, mlp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--samples", type=int, default=None)
    args = p.parse_args(argv)
    x, y, x_test, y_test = digits(args.samples)
    steps = args.epochs * -(-len(x) // 32)
    optimizers = {
        "nested": lambda: NestedLearningOptimizer(learning_rate=0.001),
        # the paper's schedulers over the whole run
        "ademamix": lambda: AdEMAMix(learning_rate=0.001, alpha_warmup_steps=steps,
                                     beta_3_warmup_steps=steps),
    }
    results = {}
    for name, make in optimizers.items():
        keras.utils.set_random_seed(0)
        model = mlp(keras)
        optimizer = make()
        if hasattr(optimizer, "compute_depths_from_model"):
            optimizer.compute_depths_from_model(model)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        history = model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0,
                            validation_data=(x_test, y_test))
        results[name] = history.history["val_accuracy"]
    for epoch in range(args.epochs):
        print(f"epoch {epoch + 1:3d}  " + "  ".join(
            f"{name} {acc[epoch]:.3f}" for name, acc in results.items()))
    return results


if __name__ == "__main__":
    main()

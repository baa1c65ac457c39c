"""nested-research: a research framework around the Nested Learning optimizer.

``from nested_research import NestedLearningOptimizer`` gives the optimizer; its relatives and
the learning-rate schedules are here too.  Importing the package registers every Keras class
the framework saves (optimizers, schedules, model layers), so ``keras.saving.load_model(path)``
loads what it writes.  It sets no environment variable and installs no import hook: the quiet
console (TensorFlow's C++ start-up lines held to ``TF_CPP_MIN_LOG_LEVEL``, default 2) belongs to
the package's own commands, ``python -m nested_research.<command>`` (:mod:`.core.console`).

The packages, from the entry point down (each may import only those below it; the contract is
in ``pyproject.toml`` and checked by the tests):

- :mod:`.train`: the Hydra app, ``python -m nested_research.train``;
- :mod:`.studies`, :mod:`.bench`: optimizer studies, benchmarks;
- :mod:`.training`: one job, its fit loop, guard, checkpoints and resume;
- :mod:`.tracking`: W&B tracking and what it reads of the optimizer;
- :mod:`.data`, :mod:`.models`: TFDS builders and pipelines; Keras model builders;
- :mod:`.optimizers`: the optimizer family (:mod:`.optimizers.nested`: ours);
- :mod:`.core`: errors, checks, typed parameters, files, console.
"""

from nested_research.core import console as _console

with _console.command_console():  # a no-op unless a command of the package is starting
    from nested_research import models as _models  # noqa: F401  (registers the model layers)
    from nested_research.optimizers import (AdEMAMix, DeltaMomentum, M3, NestedLearningOptimizer,
                                            PerEpochSchedule, WarmupCosineSchedule)

__all__ = ["AdEMAMix", "DeltaMomentum", "M3", "NestedLearningOptimizer", "PerEpochSchedule",
           "WarmupCosineSchedule", "__version__"]
__version__ = "0.3.0"

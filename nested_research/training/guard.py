"""Non-finite guard: a step with a NaN/inf loss or gradient never reaches the optimizer.

``NonFiniteGuard.install(model)`` replaces the model's ``train_step`` (Keras'
"customizing what happens in fit") with one that computes the loss and the
gradients exactly as Keras' TensorFlow ``train_step`` does, then::

    bad_loss = not isfinite(loss)
    skip     = bad_loss or any(not all(isfinite(g)) for g in gradients)
    (both summed over all replicas under a tf.distribute strategy)
    skip ? nothing : optimizer.apply_gradients(zip(gradients, weights))
    skipped_steps += skip
    nonfinite_streak = nonfinite_streak + 1 if bad_loss else 0

The skip is ``optimizers.nonfinite.NonFiniteSkip``, the same mechanism as the family
optimizers' ``skip_nonfinite`` (one flag more: the loss).  The guard is then a Keras callback
that stops the run with
``NonFiniteLossError`` once the loss has been non-finite for
``max_nonfinite_steps`` consecutive steps.  ``fit.fit`` installs it on
every model it trains (``trainer.max_nonfinite_steps``, default 20).

Decisions
---------
* **Whole model, whole step.**  One non-finite value anywhere (the loss or any
  gradient, dense or ``IndexedSlices``) skips the update of every variable:
  weights, every optimizer variable (memory tiers, moments, accumulators,
  per-variable counters, statistics) and ``optimizer.iterations`` stay
  bitwise as they were.  The step is as if the batch had not been drawn,
  except that it consumed data: it counts towards ``trainer.max_steps``,
  the epoch length and W&B's ``trainer/step`` (batches), not towards
  ``optimizer.iterations`` (``results.json`` ``steps``).  Learning-rate
  schedules and the nested optimizer's update intervals run on
  ``iterations``, so the next good step is the step the skipped one would
  have been.
* **Any optimizer, no optimizer changes.**  The decision is taken outside the
  optimizer, so ``NestedLearningOptimizer`` and every Keras optimizer (Adam,
  AdamW, NAdam, SGD, Lion, ...) are covered without overriding ``apply``.
* **Mixed precision.**  Under ``mixed_float16`` Keras wraps the optimizer in a
  ``LossScaleOptimizer``: the gradients checked are those of the scaled loss,
  and a skipped step with a finite loss is a loss-scale overflow: the guard
  then does what ``LossScaleOptimizer`` does for one (halve
  ``dynamic_scale``, reset its ``step_counter``) and leaves the inner
  optimizer untouched.  Overflow steps are counted in ``skipped_steps`` too
  (a few at the start of a float16 run are normal); a non-finite *loss* keeps
  the scale (scaling cannot cure it).
* **Distribution.**  Under a strategy with several replicas the decision is
  global: every replica's two flags are summed before it, so all replicas take
  the same branch (one replica with a NaN batch skips the step everywhere;
  without this, replicas would diverge and the gradient all-reduce inside
  ``apply`` would hang or apply the NaN).  With a strategy that uses
  ``merge_call`` (``MirroredStrategy``, multi-worker) the decision and the
  conditional apply run in cross-replica context (``merge_call``, then
  ``call_for_each_replica``), as ``LossScaleOptimizer`` does: a ``tf.cond``
  in replica context may not contain the optimizer's ``merge_call``.  There
  the flags of the local replicas are summed without a collective op (an
  extra collective launched next to the optimizer's gradient all-reduce got
  its instance keys out of order between devices when the process had
  trained under another ``MirroredStrategy`` before: "Shape mismatch in the
  collective instance"); only replicas on other workers add a
  ``strategy.reduce``.  Strategies without ``merge_call`` (XLA on GPUs)
  all-reduce the flags in replica context.  The counters are
  ``ONLY_FIRST_REPLICA`` variables, updated once per step.
* **Metrics.**  A skipped step does not update the loss tracker or the
  compiled metrics: the running ``train/loss`` / ``train/accuracy`` are
  means over the steps that trained, never NaN because of a skipped batch.
  (An epoch in which every step was skipped reports the metrics' empty
  value, 0.)  Validation and test evaluation are unchanged.
* **Logged.**  The step returns ``skipped_steps`` (the guard's total: of this
  fit, or of the whole run when a resumed run restored the counters from its
  checkpoint) next to the metrics, so Keras' logs carry it: the W&B tracker logs it as
  ``train/skipped_steps`` on its logging steps (and ``train_epoch/...`` per
  epoch), the history and ``results.json`` ``metrics`` as
  ``train/skipped_steps``; ``TrainResult.skipped_steps`` and
  ``results.json`` ``skipped_steps`` hold the exact count.  Keras' progress bar
  shows it only once a step was skipped (``QuietProgbar``, which ``fit.fit``
  passes to ``model.fit``).
* **Stopping.**  The callback reads the streak counter after every batch (one
  scalar; Keras already converts the logs to Python numbers after every
  batch when a callback has ``on_train_batch_end``, as the trainer's do, so
  this adds no synchronisation) and raises ``NonFiniteLossError`` (a
  ``RuntimeError``) at the ``K``-th consecutive non-finite loss: ``fit``
  raises, so nothing after the last good periodic checkpoint is written as a
  "final" state, ``job.run`` finishes the W&B run as failed (exit code 1,
  the message in its summary) and ``python -m nested_research.train`` prints
  a one-line error and exits with status 1.  Non-finite *gradients* with a
  finite loss are skipped and counted but never stop the run (under float16
  they are the loss scale's normal overflows).  With ``steps_per_execution >
  1`` the streak is checked once per execution.
* **Cost.**  One ``isfinite`` pass over the gradients and a scalar
  ``tf.cond`` per step (plus a 2-float reduction across workers in
  multi-worker training).

The model keeps its class (``model.keras`` files stay plain functional
models); the guard's counters are Keras variables held by the guard
(``guard.variables``, which ``fit.fit`` hands to the checkpointer), not
in ``model.weights``.
It needs the TensorFlow backend and uses the Keras internals that Keras' own
TensorFlow ``train_step`` uses (``Model._loss_tracker``, ``Model._compute_loss``,
``keras.src.losses.loss.unscale_loss_for_distribution``; checked against
Keras 3.15); ``install`` checks that the model has them.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops

from nested_research.core.checks import check_int
from nested_research.core.steps import StepCounter
from nested_research.optimizers.nonfinite import NonFiniteSkip

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "QuietProgbar", "check_max_nonfinite_steps",
           "DEFAULT_MAX_NONFINITE_STEPS"]

#: Consecutive non-finite losses that stop a run, unless told otherwise.
DEFAULT_MAX_NONFINITE_STEPS = 20


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite for ``max_nonfinite_steps`` consecutive steps."""


def check_max_nonfinite_steps(value, param: str = "max_nonfinite_steps") -> int:
    """``value`` (consecutive non-finite losses that stop the run) as an int >= 1, else
    ``ValueError`` naming ``param`` and the value (``checks.check_int``)."""
    return check_int(param, value, low=1)


def _is_loss_scale(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


class NonFiniteGuard(keras.callbacks.Callback):
    """Skips non-finite steps of ``model.fit`` and stops after ``max_nonfinite_steps`` bad losses.

    Usage::

        guard = NonFiniteGuard(max_nonfinite_steps=20).install(model)  # before fit
        model.fit(..., callbacks=[..., guard])   # last, so the others see the last step
        guard.skipped_steps                      # steps skipped in this fit

    See the module docstring for what a skipped step leaves untouched.
    """

    def __init__(self, max_nonfinite_steps: int = DEFAULT_MAX_NONFINITE_STEPS):
        super().__init__()
        self.max_nonfinite_steps = check_max_nonfinite_steps(max_nonfinite_steps)
        self._skipped = None
        self._streak = None
        self._installed_on = None
        self._step_fn = None
        self._batches = 0
        self._counter = StepCounter()
        self._epoch = 0

    # ------------------------------------------------------------ state
    @property
    def variables(self) -> list:
        """The guard's counters (``skipped_steps``, ``nonfinite_streak``), for checkpoints."""
        return [v for v in (self._skipped, self._streak) if v is not None]

    @property
    def skipped_steps(self) -> int:
        """Steps skipped (non-finite loss or gradient): since ``install``, or restored."""
        return 0 if self._skipped is None else int(self._skipped.numpy())

    @property
    def nonfinite_streak(self) -> int:
        """Consecutive non-finite losses up to the last step."""
        return 0 if self._streak is None else int(self._streak.numpy())

    # ------------------------------------------------------------ install
    def install(self, model: keras.Model) -> "NonFiniteGuard":
        """Give ``model`` the guarded ``train_step`` (before ``compile``/``fit``); returns self."""
        if keras.backend.backend() != "tensorflow":
            raise ValueError(f"NonFiniteGuard needs the TensorFlow backend; Keras runs on "
                             f"{keras.backend.backend()!r}")
        if not isinstance(model, keras.Model):
            raise ValueError(f"NonFiniteGuard.install: model={model!r} is not a keras.Model")
        if not hasattr(model, "_loss_tracker") or not hasattr(model, "compute_loss"):
            raise ValueError("NonFiniteGuard.install: this Keras version's Model lacks "
                             "`_loss_tracker`/`compute_loss`, which the guarded train_step uses")
        with model.distribute_strategy.scope():
            self._skipped, self._streak = (
                keras.Variable(0, dtype="int64", trainable=False, name=name,
                               aggregation="only_first_replica")
                for name in ("skipped_steps", "nonfinite_streak"))
        guard = self

        def train_step(data):
            return guard._train_step(model, data)

        model.train_step = train_step
        model.train_function = None  # a compiled model re-traces with the guarded step
        self._installed_on, self._step_fn = model, train_step
        return self

    # ------------------------------------------------------------ the step
    def _train_step(self, model, data):
        """Keras' TensorFlow ``train_step`` with the update (and metric update) made conditional."""
        import tensorflow as tf
        from keras.src.losses.loss import unscale_loss_for_distribution

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            if getattr(model, "_call_has_training_arg", True):  # (Keras internals, by version)
                y_pred = model(x, training=True)
            else:
                y_pred = model(x)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                       training=True) \
                if hasattr(model, "_compute_loss") else \
                model.compute_loss(x, y, y_pred, sample_weight, training=True)
            scaled = model.optimizer.scale_loss(loss) if model.optimizer is not None else loss

        weights = model.trainable_weights
        grads = tape.gradient(scaled, weights) if weights else []
        if not weights:
            warnings.warn("The model does not have any trainable weights.")
        opt = model.optimizer
        if weights and opt is not None and not opt.built:
            # What ``apply`` does on its first call, here, before the conditional: the skip
            # branch touches a ``LossScaleOptimizer``'s variables, and no variable should be
            # created inside a branch.
            with keras.name_scope(opt.name, caller=opt):
                opt.build(weights)
            opt.built = True
        skip = self._apply_or_skip(model.optimizer, loss, grads, weights)

        def update_metrics():
            model._loss_tracker.update_state(
                unscale_loss_for_distribution(loss),
                sample_weight=tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0])
            model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        ops.cond(skip, lambda: None, update_metrics)
        logs = dict(model.get_metrics_result())
        logs["skipped_steps"] = tf.cast(self._skipped.value, tf.float32)
        return logs

    def _apply_or_skip(self, optimizer, loss, grads, weights):
        """Apply ``grads`` unless some value is non-finite on some replica; return ``skip``
        (the decision across replicas is ``nonfinite.apply_unless_flagged``)."""
        lso = _is_loss_scale(optimizer)
        variables = list(weights)

        def apply(grads_):
            if variables:
                optimizer.apply_gradients(zip(grads_, variables))

        def streak(total):  # consecutive non-finite losses (the stopping rule)
            self._streak.assign(ops.where(total[0] > 0, self._streak + 1,
                                          ops.zeros((), "int64")))

        def overflow(total):  # a loss-scale overflow: what LossScaleOptimizer does for one
            def halve():
                optimizer.step_counter.assign(0)
                optimizer.dynamic_scale.assign(optimizer.dynamic_scale * 0.5)
            ops.cond(total[0] > 0, lambda: None, halve)

        skip = NonFiniteSkip(self._skipped)
        return skip.apply(NonFiniteSkip.flags([loss], grads), apply, (list(grads),),
                          also=streak, on_skip=overflow if lso else None)

    def on_train_begin(self, logs=None):
        if self._installed_on is not self.model or self.model.train_step is not self._step_fn:
            raise RuntimeError("NonFiniteGuard: call guard.install(model) on the model being "
                               "trained before fit (its train_step is not the guarded one)")
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._counter.on_epoch_begin()
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._batches += self._counter.advance(batch)
        streak = int(self._streak.numpy())
        if streak >= self.max_nonfinite_steps:
            last = self._batches
            opt = self.model.optimizer  # (compiled: fit is running)
            updates = int(ops.convert_to_numpy(opt.iterations)) if opt is not None else 0
            raise NonFiniteLossError(
                f"the loss was NaN or infinite for {streak} consecutive steps (steps "
                f"{last - streak + 1}-{last} of this fit, epoch {self._epoch + 1}); "
                f"max_nonfinite_steps={self.max_nonfinite_steps}. Stopped: none of these "
                f"steps reached the weights or the optimizer ({updates} updates applied, "
                f"{self.skipped_steps} steps skipped). Lower the learning rate, check the "
                f"data for NaN/inf, or raise trainer.max_nonfinite_steps.")


class QuietProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, without ``skipped_steps`` while no step was skipped.

    The guarded step returns ``skipped_steps`` in its logs (for the tracker and
    the history); the bar shows it only once it is non-zero.  Passed in ``fit``'s
    callbacks, it replaces the bar Keras would add (``fit.fit`` does this).
    """

    @staticmethod
    def _shown(logs):
        if logs and not logs.get("skipped_steps", 1):
            return {k: v for k, v in logs.items() if k != "skipped_steps"}
        return logs

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._shown(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._shown(logs))

"""What a job builds from its composed config (``instantiate`` is called only here and in
``job.py``): the learning rate, the optimizer, the distribution strategy, the model's inputs.

The optimizer is built once per job, in ``job.py`` once the data fixes the run's length;
:func:`check_optimizer` (preflight) checks its keywords before anything is built, through the
class's declared parameters (``family.check_arguments``).
"""

from __future__ import annotations

import pydoc

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from nested_research.core.checks import check_real
from nested_research.core.errors import ConfigError
from nested_research.optimizers.family import check_arguments
from nested_research.optimizers.schedules import RunSchedule
from nested_research.training.config_groups import optimizer_group_args

def make_strategy(name):
    """``None``: the default (one device); ``"mirrored"``: ``MirroredStrategy`` (local devices);
    ``"multi_worker"``: ``MultiWorkerMirroredStrategy``, cluster from ``TF_CONFIG`` (README)."""
    import tensorflow as tf

    if name is None:
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def model_inputs(data) -> dict:
    """What the model builders take from the data."""
    kw = {"input_shape": tuple(data.input_shape), "num_classes": data.num_classes}
    if data.task in ("sequence", "language_model"):
        kw["vocab_size"] = int(data.metadata["vocab_size"])
    if data.task == "sequence":  # logits only at the query positions; a language model: all
        kw["output_positions"] = int(data.metadata["num_queries"])
    return kw


def build_learning_rate(cfg: DictConfig, steps_per_epoch: int, total_steps: int):
    """``optimizer.learning_rate`` wrapped by the ``lr_schedule`` group's schedule, sized for
    the run by its ``for_run`` (``optimizers.schedules.RunSchedule``)."""
    lr = cfg.optimizer.learning_rate
    try:
        lr = check_real("optimizer.learning_rate", lr, low=0, low_open=True)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    target = cfg.lr_schedule.get("_target_")
    if target is None:
        return lr
    schedule = get_class(target)
    if not (isinstance(schedule, type) and issubclass(schedule, RunSchedule)):
        raise ConfigError(f"lr_schedule._target_={target!r} is not a schedule sized by the run; "
                          f"allowed: a subclass of nested_research.optimizers.schedules."
                          f"RunSchedule, or null (a constant rate)")
    params = OmegaConf.to_container(cfg.lr_schedule, resolve=True)
    params.pop("_target_")
    return schedule.for_run(lr, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                            **params)


def _extra_arguments(cfg: DictConfig, total_steps: int, stats_every: int) -> dict:
    """The optimizer's keywords beside ``optimizer.params``: the run-length parameters, and the
    memory/blend/interval groups where the config has them (``optimizer=nested`` brings them:
    ``config_groups.py``) with ``stats_every``."""
    extra = {name: int(total_steps) for name in run_length_params(cfg)}
    groups = optimizer_group_args(cfg)
    if groups:
        extra.update(groups, stats_every=stats_every)
    return extra


def build_optimizer(cfg: DictConfig, steps_per_epoch: int, total_steps: int, stats_every: int):
    """The optimizer: ``optimizer.params`` plus the memory/blend/interval groups where the config
    has them (``optimizer=nested`` brings them: ``config_groups.py``) and then ``stats_every``.

    ``optimizer.run_length_params`` names parameters set to the run's length in optimizer steps
    (``total_steps``) here, as AdEMAMix's authors set its warm-ups; ``[]`` keeps the file's values.
    """
    lr = build_learning_rate(cfg, steps_per_epoch, total_steps)
    extra = _extra_arguments(cfg, total_steps, stats_every)
    # (_convert_: list parameters, e.g. Muon's exclude_layers, reach the optimizer as lists)
    return instantiate(cfg.optimizer.params, learning_rate=lr, _convert_="all", **extra)


def check_optimizer(cfg: DictConfig, total_steps: int, stats_every: int) -> None:
    """What :func:`build_optimizer` would get, checked without building the optimizer: the
    learning rate and its schedule (a plain object, built on trial with one step per epoch) and
    every keyword through the class's declaration (``family.check_arguments``); ``ValueError``.
    """
    build_learning_rate(cfg, steps_per_epoch=1, total_steps=total_steps)
    params = OmegaConf.to_container(cfg.optimizer.params, resolve=True)
    target = params.pop("_target_")
    cls = pydoc.locate(str(target))
    if not isinstance(cls, type):
        raise ConfigError(f"optimizer.params._target_={target!r} must be the import path of an "
                          f"optimizer class")
    check_arguments(cls, {**params, **_extra_arguments(cfg, total_steps, stats_every)})


def run_length_params(cfg: DictConfig) -> list[str]:
    """``optimizer.run_length_params``, each checked to be one of ``optimizer.params``."""
    names = cfg.optimizer.get("run_length_params") or []
    allowed = sorted(k for k in cfg.optimizer.params if k != "_target_")
    for name in names:
        if name not in allowed:
            raise ConfigError(f"optimizer.run_length_params: {name!r} is not a parameter of "
                              f"{cfg.optimizer.params._target_}; allowed: {allowed}")
    return list(names)

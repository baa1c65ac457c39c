"""What a job builds from its composed config (``instantiate`` is called only here and in
``job.py``): the learning rate, the optimizer, the distribution strategy, the model's inputs.

The optimizer is built once per job, in ``job.py`` once the data fixes the run's length;
:func:`check_optimizer` (preflight) checks its keywords before anything is built, through the
class's declared parameters (``family.check_arguments``).
"""

from __future__ import annotations

import pydoc

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nested_research.core.checks import check_real
from nested_research.core.errors import ConfigError
from nested_research.optimizers.family import check_arguments

STRATEGIES = (None, "mirrored", "multi_worker")


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
    """``optimizer.learning_rate`` wrapped by the ``lr_schedule`` group's schedule."""
    lr = cfg.optimizer.learning_rate
    try:
        lr = check_real("optimizer.learning_rate", lr, low=0, low_open=True)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.lr_schedule.get("_target_") is None:
        return lr
    target = cfg.lr_schedule._target_
    extra = {"steps_per_epoch": steps_per_epoch} if target.endswith("PerEpochSchedule") \
        else {"total_steps": total_steps}
    return instantiate(cfg.lr_schedule, initial_learning_rate=lr, **extra)


def _extra_arguments(cfg: DictConfig, total_steps: int, stats_every: int) -> dict:
    """The optimizer's keywords beside ``optimizer.params``: the run-length parameters and,
    for ours, the memory/blend/interval groups and ``stats_every``."""
    extra = {name: int(total_steps) for name in run_length_params(cfg)}
    if cfg.optimizer.uses_memory_groups:
        for group in ("memory", "blend_mode", "schedule_curve"):
            extra.update(OmegaConf.to_container(cfg[group], resolve=True))
        extra["stats_every"] = stats_every
    return extra


def build_optimizer(cfg: DictConfig, steps_per_epoch: int, total_steps: int, stats_every: int):
    """The optimizer: ``optimizer.params`` plus, for ours, the memory/blend/interval groups.

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

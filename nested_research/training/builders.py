"""What a job builds from its composed config (``instantiate`` is called only here and in
``job.py``): the learning rate, the optimizer, the distribution strategy, the model's inputs."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from nested_research.core.checks import check_real
from nested_research.core.errors import ConfigError
from nested_research.training.config_groups import optimizer_group_args

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


def build_optimizer(cfg: DictConfig, steps_per_epoch: int, total_steps: int, stats_every: int):
    """The optimizer: ``optimizer.params`` plus the memory/blend/interval groups where the config
    has them (``optimizer=nested`` brings them: ``config_groups.py``) and then ``stats_every``.

    ``optimizer.run_length_params`` names parameters set to the run's length in optimizer steps
    (``total_steps``) here, as AdEMAMix's authors set its warm-ups; ``[]`` keeps the file's values.
    """
    lr = build_learning_rate(cfg, steps_per_epoch, total_steps)
    extra = {name: int(total_steps) for name in run_length_params(cfg)}
    groups = optimizer_group_args(cfg)
    if groups:
        extra.update(groups, stats_every=stats_every)
    # (_convert_: list parameters, e.g. Muon's exclude_layers, reach the optimizer as lists)
    return instantiate(cfg.optimizer.params, learning_rate=lr, _convert_="all", **extra)


def run_length_params(cfg: DictConfig) -> list[str]:
    """``optimizer.run_length_params``, each checked to be one of ``optimizer.params``."""
    names = cfg.optimizer.get("run_length_params") or []
    allowed = sorted(k for k in cfg.optimizer.params if k != "_target_")
    for name in names:
        if name not in allowed:
            raise ConfigError(f"optimizer.run_length_params: {name!r} is not a parameter of "
                              f"{cfg.optimizer.params._target_}; allowed: {allowed}")
    return list(names)

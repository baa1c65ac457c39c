"""The nested optimizer's own config groups: ``memory``, ``blend_mode`` and ``schedule_curve``.

They come with ``optimizer=nested``: conf/optimizer/nested.yaml names them in its defaults list
(``/memory@_global_.memory: attention`` and so on), so they compose at the top level
(``cfg.memory``) and ``memory=fixed`` on the command line chooses among them, and a baseline's
config has none of them.  What follows from that rule, in one place:

- :func:`optimizer_group_args`: the optimizer's keyword arguments from the groups the config
  has (``builders.build_optimizer``);
- :func:`register_resolvers`: ``${nr.join:...}``, with which conf/config.yaml names the run
  directory ``<time>_<optimizer>[_<memory mode>]``, the memory mode only where there is one;
- :func:`check_group_overrides`: a command line that sets one of the groups for an optimizer
  that has none stops with one line (``ConfigError``) instead of Hydra's "Could not override
  'memory'. No match in the defaults list".
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re

from omegaconf import DictConfig, OmegaConf

from nested_research.core.configs import conf_dir
from nested_research.core.errors import ConfigError

#: The groups conf/optimizer/nested.yaml brings into the config, in the order they are passed.
OPTIMIZER_GROUPS = ("memory", "blend_mode", "schedule_curve")

_GROUPS_TEXT = f"{', '.join(OPTIMIZER_GROUPS[:-1])} and {OPTIMIZER_GROUPS[-1]}"
#: A command-line override that sets one of them (``memory=fixed``, ``+blend_mode=equal``,
#: ``schedule_curve.max_interval=4``); ``~memory`` (delete) is not one.
_SETS_GROUP = re.compile(r"^\+{0,2}(%s)(?=[.@=])" % "|".join(OPTIMIZER_GROUPS))


def optimizer_group_args(cfg: DictConfig) -> dict:
    """The keyword arguments of the groups in ``OPTIMIZER_GROUPS`` that ``cfg`` has (none for a
    baseline), resolved."""
    args = {}
    for group in OPTIMIZER_GROUPS:
        if cfg.get(group) is not None:
            args.update(OmegaConf.to_container(cfg[group], resolve=True))
    return args


def _join(separator: str, *parts) -> str:
    return str(separator).join(str(p) for p in parts if p not in (None, ""))


def register_resolvers() -> None:
    """Register ``${nr.join:<separator>,<part>,...}`` (the parts that are not null or empty,
    joined) for the configs' interpolations; a no-op when registered already.  Called by the
    code that composes and resolves the Hydra config (``nested_research.train``, the studies'
    ``compose``), not on import of the package."""
    if not OmegaConf.has_resolver("nr.join"):
        OmegaConf.register_new_resolver("nr.join", _join)


def _parse(argv: list[str]):
    """Hydra's reading of ``argv`` (its own parser), or ``None`` where it would not parse: Hydra
    then reports that itself."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(argv)
        return args, OverridesParser.create().parse_overrides(args.overrides)
    except (SystemExit, Exception):  # noqa: BLE001 - Hydra's own error comes next
        return None


def _choices(overrides) -> list[list[str]] | None:
    """Each combination of the values of the ``optimizer`` and ``experiment`` sweeps of a
    multirun, as overrides (``[[]]`` without such sweeps); ``None`` for a sweep that cannot be
    listed here (``glob``)."""
    lists = []
    for o in overrides:
        if o.is_sweep_override() and o.key_or_group in ("optimizer", "experiment"):
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # noqa: BLE001 - glob(...) needs Hydra's config loader
                return None
            lists.append([f"{o.get_key_element()}={v}" for v in values])
    return [list(c) for c in itertools.product(*lists)]


def check_group_overrides(argv: list[str]) -> None:
    """``ConfigError`` when the command line ``argv`` (``python -m nested_research.train``'s
    arguments) sets ``memory``, ``blend_mode`` or ``schedule_curve`` and the run's optimizer
    (of any job of a multirun) has no such group.

    Composes the config (without those overrides) only when such an override is given, once
    for each ``optimizer``/``experiment`` choice of a multirun; anything it cannot read or
    compose is left to Hydra, which reports it.
    """
    if not any(_SETS_GROUP.match(arg) for arg in argv):
        return
    parsed = _parse(argv)
    if parsed is None:
        return
    args, overrides = parsed
    sets_group = [o for o in overrides if not o.is_delete() and o.input_line
                  and _SETS_GROUP.match(o.input_line)]
    rest = [o for o in overrides if o not in sets_group]
    if not sets_group or (not args.multirun and any(o.is_sweep_override() for o in overrides)):
        return  # (a sweep without -m: Hydra's error)
    combinations = _choices(rest)
    if combinations is None:
        return
    fixed = [o.input_line for o in rest if not o.is_sweep_override() and o.input_line]
    for combination in combinations:
        cfg = _compose(args, fixed + combination)
        if cfg is None:
            return
        for o in sets_group:
            group = _SETS_GROUP.match(o.input_line).group(1)
            if cfg.get(group) is None:
                name = cfg.optimizer.get("name") if cfg.get("optimizer") is not None else None
                raise ConfigError(
                    f"{o.input_line}: optimizer={name} has no {group} group ({_GROUPS_TEXT} "
                    f"come with optimizer=nested only); drop {o.input_line} or choose "
                    f"optimizer=nested")


def _compose(args, overrides: list[str]) -> DictConfig | None:
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(args.config_path or conf_dir(), version_base="1.3"):
            return compose(args.config_name or "config", overrides=overrides)
    except Exception:  # noqa: BLE001 - Hydra reports it when it composes the run
        return None

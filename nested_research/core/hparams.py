"""Typed hyperparameter groups: each optimizer parameter is declared once.

A group is a frozen dataclass whose fields carry their check
(``checks.py``); constructing it validates and normalises every value, and
``as_dict()`` gives the values back for ``get_config``.  An optimizer lists
its groups; its constructor keywords, their defaults, its ``get_config`` and
its read-only attributes (``opt.long_term_decay``) are all derived from them
(``family.FamilyOptimizer``), so a parameter is written in one place::

    @dataclasses.dataclass(frozen=True)
    class Moments(HParams):
        beta_2: float = param(0.999, real(0.0, 1.0, high_open=True))

The Hydra config groups mirror these groups (``conf/memory`` sets the fields
of ``memory.MemoryParams``, ``conf/schedule_curve`` those of
``intervals.IntervalParams`` ...).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Iterable, Mapping

from nested_research.core import checks

Check = Callable[[str, Any], Any]


def param(default, check: Check):
    """A field with its default and its check (``check(name, value) -> normalised value``)."""
    return dataclasses.field(default=default, metadata={"check": check})


# ---------------------------------------------------------------- checks as field metadata
def real(low=None, high=None, low_open=False, high_open=False, optional=False) -> Check:
    return lambda name, v: checks.check_real(name, v, low, high, low_open, high_open, optional)


def integer(low=None, high=None, optional=False) -> Check:
    return lambda name, v: checks.check_int(name, v, low, high, optional)


def boolean() -> Check:
    return checks.check_bool


def choice(allowed: Iterable) -> Check:
    allowed = tuple(allowed)
    return lambda name, v: checks.check_choice(name, v, allowed)


def anything() -> Check:
    return lambda name, v: v


class HParams:
    """Base of the frozen dataclass groups (see the module docstring).

    ``PREFIX`` names the group's keys in messages: ``""`` for constructor keywords,
    ``"trainer."`` for the trainer's settings (``trainer.epochs=0 must be ...``)."""

    PREFIX = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name,
                                   check(self.PREFIX + f.name, getattr(self, f.name)))
        self.validate()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):
        """The group from a config node's keys; ``ValueError`` names a key the group does not
        have, with the keys it has."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ValueError(f"{cls.PREFIX}{unknown[0]}={values[unknown[0]]!r} is not a setting "
                             f"here; allowed: {', '.join(cls.names())}")
        return cls(**dict(values))

    def validate(self) -> None:
        """Checks across fields (override); single fields are checked by their metadata."""

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict:
        return {f.name: f.default for f in dataclasses.fields(cls)}


def split(kwargs: Mapping[str, Any], groups: Mapping[str, type]) -> tuple[dict, dict]:
    """``({group: HParams instance}, remaining kwargs)``: each group takes its own keys."""
    rest = dict(kwargs)
    built = {}
    for key, cls in groups.items():
        mine = {n: rest.pop(n) for n in cls.names() if n in rest}
        built[key] = cls(**mine)
    return built, rest


def signature(head: Iterable[inspect.Parameter], groups: Mapping[str, type],
              tail: Iterable[inspect.Parameter] = ()) -> inspect.Signature:
    """A constructor signature listing every group field as a keyword with its default."""
    params = list(head)
    for cls in groups.values():
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
                   for n, d in cls.defaults().items()]
    params += list(tail)
    params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)

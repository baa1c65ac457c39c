"""One validator style for every argument the project takes.

Each check returns the value (normalised: ``numpy`` integers become ``int``,
integers become ``float`` where a real is asked for) or raises ``ValueError``
worded one way everywhere::

    <param>=<value!r> must be <what is allowed>

``param`` is the name the user wrote (``batch_size``, ``trainer.epochs``,
``memory.long_term_decay``); the message names it, the value and what is
allowed, so a caller only picks the check.  ``ConfigError`` (``errors.py``)
is a ``ValueError``: the entry point reports both the same way.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable


def _fail(param: str, value: Any, allowed: str):
    raise ValueError(f"{param}={value!r} must be {allowed}")


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def _outside(x, low, high, low_open, high_open) -> bool:
    return (low is not None and (x < low or (low_open and x == low))) or \
        (high is not None and (x > high or (high_open and x == high)))


def check_int(param: str, value: Any, low: int | None = None, high: int | None = None,
              optional: bool = False) -> int | None:
    """An integer (not a bool) in ``[low, high]``; ``None`` passes when ``optional``."""
    if optional and value is None:
        return None
    allowed = " ".join(filter(None, ["an integer", _range_text(low, high, False, False)])) + \
        (" (or None)" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
            _outside(int(value), low, high, False, False):
        _fail(param, value, allowed)
    return int(value)


def check_real(param: str, value: Any, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False,
               optional: bool = False) -> float | None:
    """A finite real number (not a bool) in the given range; ``None`` passes when ``optional``."""
    if optional and value is None:
        return None
    allowed = " ".join(filter(None, ["a number", _range_text(low, high, low_open, high_open)])) \
        + (" (or None)" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value) or _outside(float(value), low, high, low_open, high_open):
        _fail(param, value, allowed)
    return float(value)


def check_bool(param: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        _fail(param, value, "True or False")
    return value


def check_choice(param: str, value: Any, allowed: Iterable) -> Any:
    """One of ``allowed`` (compared with ``==``, types included: ``1`` is not ``'1'``)."""
    allowed = tuple(allowed)
    if not any(type(value) is type(a) and value == a for a in allowed):
        _fail(param, value, f"one of {allowed}")
    return value


def check_str(param: str, value: Any, what: str = "a non-empty string") -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        _fail(param, value, what)
    return value

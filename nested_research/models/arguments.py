"""Argument checks shared by the model builders.

Numbers and choices use :mod:`nested_research.core.checks`; the checks here are the
ones only models need (shapes, lists of widths, activations, layer names), worded
the same way: ``<param>=<value!r> must be <what is allowed>``.  List-valued
arguments accept any non-string sequence, including OmegaConf ``ListConfig``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import keras

from nested_research.core.checks import check_int, check_real

__all__ = [
    "check_activation",
    "check_chunk_size",
    "check_cms_levels",
    "check_dropout",
    "check_input_shape",
    "check_int_list",
    "check_level_list",
    "check_model_name",
    "check_num_classes",
]


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_num_classes(num_classes: Any) -> int:
    """The number of output logits: an integer >= 2."""
    return check_int("num_classes", num_classes, low=2)


def check_dropout(dropout: Any) -> float:
    """A dropout rate in ``[0, 1)``."""
    return check_real("dropout", dropout, 0.0, 1.0, high_open=True)


def check_model_name(name: Any) -> str:
    """A Keras model name: a non-empty string without ``/``."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name={name!r} must be a non-empty string without '/'")
    return name


def check_int_list(param: str, value: Any, min_len: int = 1) -> tuple[int, ...]:
    """A list of at least ``min_len`` integers >= 1 (layer widths)."""
    items = None
    if not isinstance(value, (str, bytes)) and isinstance(value, Sequence):
        items = list(value)
    if items is None or len(items) < min_len or not all(_is_positive_int(v) for v in items):
        shown = value if items is None else items
        raise ValueError(
            f"{param}={shown!r} must be a list of integers >= 1 (at least {min_len})"
        )
    return tuple(int(v) for v in items)


def check_input_shape(
    input_shape: Any, allowed_ranks: tuple[int, ...], what: str
) -> tuple[int, ...]:
    """A per-example shape: ``allowed_ranks`` integers >= 1 (no batch axis)."""
    ranks = " or ".join(str(r) for r in allowed_ranks)
    bad = isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence)
    dims = [] if bad else list(input_shape)
    if bad or len(dims) not in allowed_ranks or not all(_is_positive_int(d) for d in dims):
        raise ValueError(
            f"input_shape={input_shape!r} must be a tuple of {ranks} integers >= 1"
            f" (the per-example shape without the batch axis: {what})"
        )
    return tuple(int(d) for d in dims)


def check_activation(activation: Any) -> str:
    """The name of a Keras activation (a string, not a callable)."""
    ok = isinstance(activation, str)
    if ok:
        try:
            keras.activations.get(activation)
        except (ValueError, TypeError):
            ok = False
    if not ok:
        raise ValueError(
            f"activation={activation!r} must be the name of a Keras activation"
            f" (e.g. 'relu', 'gelu', 'tanh', 'silu')"
        )
    return activation


def check_level_list(param: str, value: Any, levels: int, what: str, check_one) -> tuple:
    """A list of exactly ``levels`` entries (one per level), each accepted by ``check_one``.

    ``check_one(entry)`` returns the normalised entry or raises; the message names the whole
    list, its value, the length wanted and ``what`` each entry may be.
    """
    items = None
    if not isinstance(value, (str, bytes)) and isinstance(value, Sequence):
        items = list(value)
    allowed = f"a list of {levels} entries (one per level), each {what}"
    if items is None or len(items) != levels:
        raise ValueError(f"{param}={value if items is None else items!r} must be {allowed}")
    out = []
    for item in items:
        try:
            out.append(check_one(item))
        except (ValueError, TypeError):
            raise ValueError(f"{param}={items!r} must be {allowed}") from None
    return tuple(out)


def check_chunk_size(param: str, value: Any) -> int | None:
    """A chunk size: an integer >= 1, or ``None`` (never updated in context)."""
    if value is None:
        return None
    if not _is_positive_int(value):
        raise ValueError(f"{param}={value!r} must be an integer >= 1 or None")
    return int(value)


def check_cms_levels(hidden_units: Any, chunk_sizes: Any, inner_learning_rates: Any,
                     seq_len: int) -> tuple[tuple, tuple, tuple]:
    """A model's CMS levels as its config names them: ``hidden_units`` (one width per level),
    ``chunk_sizes`` and ``inner_learning_rates`` (one entry per level each).

    A chunk size must also be at most the sequence length ``seq_len``: a longer chunk never
    completes, so its level would silently never update in context (``None`` says that).
    """
    hidden_units = check_int_list("hidden_units", hidden_units)
    levels = len(hidden_units)
    per_level = f"(levels: hidden_units={list(hidden_units)!r})"
    chunks = check_level_list("chunk_sizes", chunk_sizes, levels,
                              f"an integer >= 1 or null {per_level}",
                              lambda v: check_chunk_size("chunk_sizes", v))
    rates = check_level_list("inner_learning_rates", inner_learning_rates, levels,
                             f"a number >= 0 {per_level}",
                             lambda v: check_real("inner_learning_rates", v, low=0.0))
    if any(c is not None and c > seq_len for c in chunks):
        raise ValueError(
            f"chunk_sizes={list(chunks)!r} must be null or at most the sequence length "
            f"L={seq_len} each (a longer chunk never completes, so its level would never "
            f"update in context)")
    return hidden_units, chunks, rates

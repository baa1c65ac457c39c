"""The project's error types, in a module of their own so that any module may raise them
without importing the entry point.

``ConfigError``: a configuration value a run cannot use (the entry point prints its
message and exits with status 2 before anything is written).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value the run cannot use."""

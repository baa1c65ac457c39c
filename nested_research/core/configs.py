"""Where the Hydra configs are: one function, for the entry point, the studies and the tests.

A source checkout (and an editable install) reads the repository's top-level ``conf/``, the one
copy the repository edits; a built wheel carries a copy of it as ``nested_research/conf`` (the
build copies it there, ``setup.py``), so an installed package runs from any directory.
"""

from __future__ import annotations

import os

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conf_dir() -> str:
    """The absolute path of the config directory (the one holding ``config.yaml``)."""
    for path in (os.path.join(_PACKAGE, "conf"), os.path.join(os.path.dirname(_PACKAGE), "conf")):
        if os.path.isfile(os.path.join(path, "config.yaml")):
            return path
    raise FileNotFoundError(f"no Hydra configs (config.yaml) in {_PACKAGE}/conf or beside the "
                            f"package: a broken install")

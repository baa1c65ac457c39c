"""``python -m nested_research.train ARGS`` in the test process.

For tests whose subject is what a command-line job does or says (its files, its one-line
error, its exit status), not the process boundary: a subprocess costs a Python start and a
TensorFlow import (5-10 s on two cores).  The process boundary itself (exit status and stderr
of a real process, TensorFlow's C++ log lines, SIGKILL, W&B's service) is tested with real
subprocesses in ``test_train.py``, ``test_nonfinite.py`` and ``test_resume.py``.
"""

from __future__ import annotations

import logging
import pathlib
import subprocess
import sys

from repo import CONF


#: Hydra leaves the test process's logging alone: its ``default`` and ``disabled`` logging
#: configs run ``logging.config.dictConfig``, which closes every handler of the process (absl's
#: closes the stream it was created with: pytest's capture file) and, for ``disabled``,
#: disables every existing logger.
NO_LOGGING = ["hydra/job_logging=none", "hydra/hydra_logging=none"]


def main_in_process(monkeypatch, *args):
    """``python -m nested_research.train *args`` in this process (Hydra's logging setup off:
    ``NO_LOGGING``); Hydra's global state and the root logger's handlers are restored
    afterwards.  Returns what ``main`` returns; a ``SystemExit`` (``sys.exit`` in ``main``, in
    its Hydra callbacks or in Hydra) propagates."""
    from hydra.core.global_hydra import GlobalHydra

    from nested_research import train

    # Imported, main's module is not __main__: Hydra would look for conf/ as a Python package.
    # (NO_LOGGING last: argparse takes the overrides as one run of positional arguments)
    monkeypatch.setattr(sys, "argv", ["nested_research.train", f"--config-path={CONF}", *args,
                                      *NO_LOGGING])
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return train.main()
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level


def cli_in_process(monkeypatch, capsys, *args) -> subprocess.CompletedProcess:
    """``main_in_process`` as a finished command: its exit status (``sys.exit``'s code; 0 when
    ``main`` returns) and what it wrote to stdout and stderr (``capsys``)."""
    capsys.readouterr()  # what the test printed before is not the command's
    try:
        main_in_process(monkeypatch, *args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): Python prints it, status 1
        err, code = f"{err}{code}\n", 1
    return subprocess.CompletedProcess(["nested_research.train", *args], code, out, err)

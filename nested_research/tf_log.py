"""TensorFlow's C++ start-up log, held to ``TF_CPP_MIN_LOG_LEVEL``.

TensorFlow 2.19+ logs through absl, and the lines its shared libraries write
while they load (``I0000 ... port.cc:153] oneDNN custom operations are on``,
``cudart_stub.cc ... Could not find cuda drivers``, absl's ``WARNING: All log
messages before absl::InitializeLog() ...``) come before TensorFlow reads
``TF_CPP_MIN_LOG_LEVEL``, so the variable alone does not hide them.
:func:`install` makes the first ``import tensorflow`` (also through ``import
keras``) pass file descriptor 2 through a filter that drops the absl lines below
that level (``I``=0, ``W``=1, ``E``=2, ``F``=3) and forwards everything else
as it comes; later lines are TensorFlow's own to filter.  Nothing changes what
TensorFlow computes (oneDNN stays as it is; only its notice goes).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import threading

__all__ = ["install", "min_log_level", "dropped"]

_ABSL_LINE = re.compile(rb"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\] ]+:\d+\] ")
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it (0 when unset or not a number)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def dropped(line: bytes, level: int) -> bool:
    """Whether the stderr ``line`` is an absl log line below ``level`` (or absl's pre-init notice)."""
    if level <= 0:
        return False
    match = _ABSL_LINE.match(line)
    if match:
        return b"IWEF".index(match.group(1)) < level
    return line.rstrip(b"\r\n") == _ABSL_NOTICE


@contextlib.contextmanager
def _filtered_stderr(level: int):
    """File descriptor 2 through :func:`dropped` while the block runs."""
    if level <= 0:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, AttributeError, ValueError):  # no usable fd 2: nothing to filter
        yield
        return

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not dropped(line, level):
                    try:
                        os.write(saved, line)
                    except OSError:
                        return

    pump = threading.Thread(target=forward, name="tf-log-filter", daemon=True)
    pump.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer goes: the pump reads to its end and stops
        pump.join(timeout=10)
        if not pump.is_alive():  # else a child process still holds the pipe: leave it be
            os.close(saved)


class _FirstTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the loading of the ``tensorflow`` package in :func:`_filtered_stderr`, once.

    A bare ``importlib.util.find_spec("tensorflow")`` (an availability check)
    leaves the finder in place; the first module execution removes it.
    """

    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            try:
                with _filtered_stderr(min_log_level()):
                    run(module)
            finally:
                with contextlib.suppress(AttributeError):
                    del loader.exec_module  # the loader's own method again

        try:
            loader.exec_module = exec_module
        except (AttributeError, TypeError):  # a loader that takes no attributes: unfiltered
            pass
        return spec


def install() -> None:
    """Filter the first ``import tensorflow`` of this process (no-op once TensorFlow is loaded)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _FirstTensorFlowImport)
                                          for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _FirstTensorFlowImport())

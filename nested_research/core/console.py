"""The console of the package's commands: TensorFlow's C++ start-up log held to
``TF_CPP_MIN_LOG_LEVEL``.

TensorFlow 2.19+ logs through absl, and the lines its shared libraries write while they load
(``I0000 ... port.cc:153] oneDNN custom operations are on``, ``cudart_stub.cc ... Could not find
cuda drivers``, absl's ``WARNING: All log messages before absl::InitializeLog() ...``) come
before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``, so the variable alone does not hide them.
:func:`command_console` wraps the package's own first import of Keras (and so TensorFlow) in
``nested_research/__init__.py``: when the process was started as ``python -m
nested_research.<command>``, the level defaults to 2 and file descriptor 2 passes through a
filter that drops the absl lines below the level (``I``=0, ``W``=1, ``E``=2, ``F``=3) and
forwards everything else as it comes; later lines are TensorFlow's own to filter.  A program
that merely imports the package is left as it was.  Nothing changes what TensorFlow computes
(oneDNN stays as it is; only its notice goes).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

__all__ = ["command_console", "dropped", "min_log_level", "started_as_command"]

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


def started_as_command(argv: list[str] | None = None) -> bool:
    """Whether this process's main program is a module of the package: ``python [options] -m
    nested_research.<module> ...`` (``sys.orig_argv``; ``argv`` for tests)."""
    argv = list(sys.orig_argv if argv is None else argv)
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return i + 1 < len(argv) and argv[i + 1].split(".")[0] == "nested_research"
        if arg.startswith("-m"):
            return arg[2:].split(".")[0] == "nested_research"
        if not arg.startswith("-") or arg.startswith("-c"):
            return False  # a script, or -c: not one of our modules
        i += 2 if arg in ("-X", "-W") else 1  # (options that take the next argument)
    return False


@contextlib.contextmanager
def command_console(argv: list[str] | None = None):
    """The console of the package's commands, for the block it wraps (the package's own imports
    of Keras and TensorFlow): when :func:`started_as_command`, ``TF_CPP_MIN_LOG_LEVEL`` defaults
    to ``2`` (a value already set wins) and TensorFlow's start-up lines below that level are
    dropped while the block runs.  Otherwise nothing changes: a program that imports the
    package keeps its environment and its stderr."""
    if not started_as_command(argv) or "tensorflow" in sys.modules:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _filtered_stderr(min_log_level()):
        yield

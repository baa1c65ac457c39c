"""What a run was made with: the versions of Python, the framework's libraries and the project,
and the git commit of the checkout the package runs from (``versions()``).

A job records them in ``results.json`` and in the W&B run config (``"versions"``); a resumed run
does not compare them (they are not part of the config its checkpoint stores).  Nothing here
imports TensorFlow: the libraries' versions come from their installed metadata.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Distributions that provide each library (the first one installed is reported).
_DISTRIBUTIONS = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly",
                   "tf-nightly-cpu"),
    "keras": ("keras", "keras-nightly"),
    "numpy": ("numpy",),
}
#: Seconds each git command may take (a slow network file system must not hold a run up).
GIT_TIMEOUT = 5.0


def _library_version(name: str) -> str | None:
    for dist in _DISTRIBUTIONS[name]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    module = sys.modules.get(name)  # (a build without metadata, already imported)
    return getattr(module, "__version__", None)


def _project_version() -> str | None:
    # The package's own version: an editable install's metadata can be older than its source.
    package = sys.modules.get("nested_research")
    return getattr(package, "__version__", None)


def _in_git_work_tree(path: str) -> bool:
    """``path`` or a folder above it holds ``.git`` (a folder, or a worktree's file)."""
    path = os.path.abspath(path)
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


#: Variables that would point git at another repository than the one holding the package (a
#: git hook running the tests sets them).
_GIT_REDIRECTS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")


def _git(*args: str) -> str | None:
    """``git -C <package dir> *args``'s output (stripped), or ``None`` on any failure."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_REDIRECTS}
    try:
        proc = subprocess.run(["git", "-C", _PACKAGE, *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit() -> dict:
    """``{"git_commit": sha, "git_dirty": bool}`` of the work tree the package's source is
    tracked in; both ``None`` when there is none (an installed package, no ``git``)."""
    none = {"git_commit": None, "git_dirty": None}
    if not _in_git_work_tree(_PACKAGE) or shutil.which("git") is None:
        return none
    # Tracked here, not merely inside some repository (a virtual environment in a checkout).
    if _git("ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return none
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return none
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":/")
    return {"git_commit": sha, "git_dirty": None if status is None else bool(status)}


def versions() -> dict:
    """The versions a run is made with: Python, TensorFlow, Keras, NumPy, the project
    (``nested_research.__version__``), and the git commit of its checkout (``git_commit``;
    ``git_dirty``: tracked files differ from it)."""
    return {"python": platform.python_version(),
            "tensorflow": _library_version("tensorflow"),
            "keras": _library_version("keras"),
            "numpy": _library_version("numpy"),
            "nested_research": _project_version(),
            **git_commit()}

"""What a run records of its environment (``nested_research.core.environment.versions``): the
libraries' versions, and the commit of the checkout the package runs from, if any.  A job's
``results.json`` carrying them: ``tests/training/test_train.py``; the W&B config:
``tests/tracking/test_tracking.py``; the installed wheel (no checkout): ``tests/test_install.py``.
"""

import importlib.metadata
import os
import platform
import shutil
import subprocess

import pytest

import nested_research
from nested_research.core import environment

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="no git")


def test_versions_are_the_installed_ones():
    found = environment.versions()
    assert found["python"] == platform.python_version()
    for name in ("tensorflow", "keras", "numpy"):
        assert found[name] == importlib.metadata.version(name)
    assert found["nested_research"] == nested_research.__version__
    assert set(found) == {"python", "tensorflow", "keras", "numpy", "nested_research",
                          "git_commit", "git_dirty"}


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *args], cwd=cwd, check=True,
                          capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
                          ).stdout.strip()


@needs_git
def test_commit_of_the_checkout_and_whether_it_is_dirty(tmp_path, monkeypatch, capfd):
    repo = tmp_path / "repo"
    package = repo / "nested_research"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.setattr(environment, "_PACKAGE", str(package))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))  # (a hook's): not followed
    assert environment.git_commit() == {"git_commit": None, "git_dirty": None}  # no repository

    _git(repo, "init", "-q")
    assert environment.git_commit() == {"git_commit": None, "git_dirty": None}  # not tracked
    _git(repo, "add", "-A")
    assert environment.git_commit() == {"git_commit": None, "git_dirty": None}  # no commit yet
    _git(repo, "commit", "-q", "-m", "one")
    sha = _git(repo, "rev-parse", "HEAD")
    assert environment.git_commit() == {"git_commit": sha, "git_dirty": False}
    (repo / "notes.txt").write_text("untracked files do not make it dirty")
    assert environment.git_commit()["git_dirty"] is False
    (package / "__init__.py").write_text("x = 1\n")  # a tracked file anywhere in the tree
    assert environment.git_commit() == {"git_commit": sha, "git_dirty": True}
    assert capfd.readouterr() == ("", "")  # git's own messages never reach the console


def test_no_git_no_commit_and_no_error(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert environment.git_commit() == {"git_commit": None, "git_dirty": None}
    assert capfd.readouterr() == ("", "")

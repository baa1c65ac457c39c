"""TensorFlow's C++ start-up lines are held to TF_CPP_MIN_LOG_LEVEL (nested_research.tf_log).

The CLI's default (no INFO lines on stderr) is checked end to end in
``test_train.py::test_cli_cfg_job_and_multirun``; these tests import no TensorFlow.
"""

import os
import subprocess
import sys

import pytest

from nested_research import tf_log

INFO = b"I0000 00:00:1796277791.186380    7040 port.cc:153] oneDNN custom operations are on.\n"
WARN = b"W0000 00:00:1796277791.186380    7040 some_file.cc:12] a warning\n"
ERROR = b"E0000 00:00:1796277740.516680    6707 cuda_platform.cc:52] failed call to cuInit\n"
NOTICE = (b"WARNING: All log messages before absl::InitializeLog() is called are written "
          b"to STDERR\n")
PLAIN = b"To enable the following instructions: AVX2, rebuild TensorFlow\n"


@pytest.mark.parametrize("level,kept", [
    (0, [INFO, WARN, ERROR, NOTICE, PLAIN]),
    (1, [WARN, ERROR, PLAIN]),
    (2, [ERROR, PLAIN]),
    (3, [PLAIN]),
])
def test_dropped_follows_the_level(level, kept):
    lines = [INFO, WARN, ERROR, NOTICE, PLAIN]
    assert [line for line in lines if not tf_log.dropped(line, level)] == kept


@pytest.mark.parametrize("users,seen", [(None, "2"), ("0", "0"), ("3", "3")])
def test_package_sets_a_default_level_and_keeps_the_users(users, seen):
    """``import nested_research`` (no TensorFlow import) defaults the level to 2, else keeps it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if users is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = users
    code = ("import os, sys, nested_research; assert 'tensorflow' not in sys.modules; "
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == seen


def test_min_log_level_reads_the_environment(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    assert tf_log.min_log_level() == 1
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "junk")
    assert tf_log.min_log_level() == 0
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    assert tf_log.min_log_level() == 0


@pytest.mark.parametrize("level", [0, 2])
def test_filtered_stderr_drops_lines_below_the_level_only(capfd, level):
    with tf_log._filtered_stderr(level):
        for line in (NOTICE, INFO, ERROR, PLAIN):
            os.write(2, line)
    err = capfd.readouterr().err.encode()
    assert ERROR in err and PLAIN in err
    assert (INFO in err) == (level == 0) and (NOTICE in err) == (level == 0)
    os.write(2, INFO)  # fd 2 is itself again afterwards
    assert INFO in capfd.readouterr().err.encode()

"""TensorFlow's C++ start-up lines are held to TF_CPP_MIN_LOG_LEVEL (nested_research.core.console).

The CLI's default (no INFO lines on stderr) is checked end to end in
``test_train.py::test_cli_cfg_job_and_multirun``; these tests import no TensorFlow.
"""

import os
import subprocess
import sys

import pytest

from nested_research.core import console as tf_log

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


def test_importing_the_package_changes_no_process_wide_state():
    """``import nested_research`` from a program sets no environment variable, installs no import
    hook and leaves TensorFlow's start-up lines alone (they are the program's to filter).  The
    libraries it uses are imported first: what they do on import is theirs (JAX, where
    installed, defaults ``TF_CPP_MIN_LOG_LEVEL`` when TensorFlow imports it)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("import os, sys, tensorflow, keras, hydra, omegaconf; env = dict(os.environ); "
            "import nested_research; "
            "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items()); "
            "ours = [h for h in sys.meta_path + sys.path_hooks "
            "        if getattr(h, '__module__', '').startswith('nested_research')]; "
            "assert not ours, ours; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "port.cc" in out.stderr  # TensorFlow's own INFO line: not filtered for a program


@pytest.mark.parametrize("argv,command", [
    (["python", "-m", "nested_research.train", "memory=fixed"], True),
    (["python", "-X", "dev", "-m", "nested_research.studies.run_all"], True),
    (["python", "-mnested_research.bench.optimizer"], True),
    (["python", "-m", "pytest", "tests"], False),
    (["python", "my_script.py", "-m", "nested_research.train"], False),
    (["python", "-c", "import nested_research"], False),
    (["python"], False),
])
def test_started_as_command_reads_the_interpreters_arguments(argv, command):
    assert tf_log.started_as_command(argv) is command


def test_command_console_is_a_no_op_for_a_program(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    with tf_log.command_console(["python", "script.py"]):
        assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ


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

"""The built wheel runs anywhere: installed into a fresh virtual environment, its commands run
from an empty directory with no checkout in sight.

The wheel is built from a copy of the repository's build inputs (setuptools writes ``build/``
and ``*.egg-info`` beside the sources it builds: the copy's, not the repository's) and installed
without its dependencies; the new environment sees this interpreter's packages through a
``.pth`` file (a plain path line: the ``.pth`` files in that directory, such as an editable
install of this repository, are not run), so nothing is downloaded.  The commands run with the
new environment's Python, ``PYTHONPATH`` scrubbed, from an empty working directory that stays
empty.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import yaml

from repo import ROOT

#: What the build reads (``pyproject.toml``: the readme; ``setup.py``: ``conf/``).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "conf",
                "nested_research")


def _build_wheel(tmp_path: pathlib.Path) -> pathlib.Path:
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--quiet", "--wheel-dir", str(dist), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = dist.glob("nested_research-*.whl")
    return wheel


def _venv(tmp_path: pathlib.Path, wheel: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """``(python, site-packages)`` of a new environment holding the wheel alone."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--no-index", "--quiet", str(wheel)], check=True, capture_output=True,
                   text=True, timeout=300)
    site = pathlib.Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    ours |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    (site / "_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return python, site


def test_wheel_installs_and_runs_from_an_empty_directory(tmp_path, digits_prepared):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"nested_research/conf/config.yaml", "nested_research/py.typed",
            "nested_research/conf/optimizer/nested.yaml"} <= names
    assert not [n for n in names if n.startswith(("tests/", "conf/", "scripts/"))]

    python, site = _venv(tmp_path, wheel)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["NESTED_RESEARCH_DATA_DIR"] = digits_prepared

    def command(*args):
        return subprocess.Popen([str(python), *args], cwd=empty, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish(proc, timeout=300):
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, (proc.args, out[-2000:], err[-3000:])
        return out, err

    # The study commands' help (meanwhile, on the other core) ...
    helps = [command("-m", f"nested_research.studies.{name}", "--help")
             for name in ("comparison", "run_all")]
    # ... and a training job, with the configs that ship in the wheel (Hydra's record of where
    # it read them: the installed package's conf_dir()) and the versions it recorded.
    out_dir = tmp_path / "out"
    stdout, stderr = finish(command("-m", "nested_research.train", "logger=none",
                                    "trainer.epochs=1", "trainer.verbose=0",
                                    f"paths.output_dir={out_dir}"))
    (results,) = out_dir.glob("runs/*/results.json")
    assert f"results: {results}" in stdout
    hydra = yaml.safe_load((results.parent / ".hydra" / "hydra.yaml").read_text())["hydra"]
    (main,) = [s for s in hydra["runtime"]["config_sources"] if s["provider"] == "main"]
    assert pathlib.Path(main["path"]) == site / "nested_research" / "conf"
    recorded = json.loads(results.read_text())
    assert recorded["epochs"] == 1
    versions = recorded["config"]["versions"]
    assert versions["nested_research"] == wheel.name.split("-")[1]
    assert versions["keras"] == importlib.metadata.version("keras")
    assert versions["git_commit"] is None  # no checkout: no commit, and no word about it
    assert "fatal:" not in stderr and "not a git repository" not in stderr

    for proc in helps:
        assert "usage:" in finish(proc)[0]
    # A real (tiny) comparison: it composes its jobs' configs from the installed package.
    study = tmp_path / "compare"
    finish(command("-m", "nested_research.studies.comparison", "--quick", "--out", str(study),
                   "--workloads", "digits_mlp", "--optimizers", "adam"))
    assert (study / "comparison.md").read_text().count("| digits_mlp | adam |") == 1
    assert len(list(study.glob("runs/*/results.json"))) == 3  # 2 rates, then seed 1
    assert list(empty.iterdir()) == []  # nothing written where the commands ran

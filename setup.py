"""The build copies the repository's top-level ``conf/`` into the package (``nested_research/conf``),
so a wheel's Hydra app runs from any directory; ``conf/`` stays the one copy the repository
edits.  Everything else is declared in ``pyproject.toml``."""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        source = pathlib.Path(__file__).resolve().parent / "conf"
        if source.is_dir():  # (an sdist carries conf/ too: MANIFEST.in)
            target = pathlib.Path(self.build_lib) / "nested_research" / "conf"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildPyWithConfigs})

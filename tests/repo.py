"""Paths of the repository the tests run in, for test modules at any depth under ``tests/``."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SCRIPTS = ROOT / "scripts"
FIXTURES = ROOT / "tests" / "fixtures"

"""The package's layout holds as declared: the import layers of ``pyproject.toml`` (checked with
import-linter), at most 12 entries at the top, every package saying what it holds, no module or
script over 400 lines, no ``sys.path`` edits, and ``scripts/`` only thin wrappers."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from repo import ROOT

PACKAGE = ROOT / "nested_research"
MAX_LINES = 400


def _python_files(*tops):
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


def test_import_layers_hold():
    """``lint-imports`` keeps every contract of ``pyproject.toml`` (layers, independence, the
    optimizers' freedom from the framework)."""
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                          " lint_imports_command()"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_contract_names_every_package():
    """Every subpackage is in a layer: a new one cannot slip past the contract."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as fh:
        contracts = tomllib.load(fh)["tool"]["importlinter"]["contracts"]
    layered = {name.strip() for c in contracts if c["type"] == "layers" and not c.get("containers")
               for layer in c["layers"] for name in layer.split("|")}
    packages = {f"nested_research.{p.name}" for p in PACKAGE.iterdir()
                if (p / "__init__.py").exists()}
    packages.add("nested_research.train")
    assert packages <= layered, packages - layered


def test_top_level_has_at_most_twelve_entries():
    entries = sorted(p.name for p in PACKAGE.iterdir()
                     if p.name not in ("__init__.py", "__pycache__", "conf"))
    assert len(entries) <= 12, entries


@pytest.mark.parametrize("package", sorted(
    str(p.parent.relative_to(ROOT)) for p in PACKAGE.rglob("__init__.py")
    if "__pycache__" not in p.parts))
def test_every_package_says_what_it_holds(package):
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    doc = ast.get_docstring(tree)
    assert doc and len(doc.split()) >= 15, f"{package}/__init__.py needs a docstring"


def test_no_module_or_script_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _python_files("nested_research", "scripts")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_sys_path_edits():
    pattern = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend|remove)|\[[^\]]*\]\s*=|[+]?=)")
    edits = [f"{path.relative_to(ROOT)}:{i}"
             for path in _python_files("nested_research", "scripts", "tests")
             if path.name != "test_architecture.py"
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not edits, edits


def test_scripts_are_thin_wrappers():
    """Each top-level script runs a module of the package (``python -m``); the examples are
    examples of the public API."""
    for path in sorted((ROOT / "scripts").glob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 10, path
        assert '"-m", "nested_research.' in source, path

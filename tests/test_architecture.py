"""The layers of the design: library packages (policies, buffers, diffusion) import nothing from the application or
the built-in plugins, and the application (rlgen_plugins.cli) reaches the plugins only through the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(package: Path) -> dict[str, list[str]]:
    """Every module name each file of ``package`` imports (absolute imports; relative ones stay inside it)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and node.level == 0]
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("library", ["policies", "buffers", "diffusion"])
def test_library_packages_import_nothing_from_the_application(library: str) -> None:
    for path, names in imported_modules(ROOT / library).items():
        assert not [n for n in names if n.split(".")[0] == "rlgen_plugins"], path  # the registry is no application


def test_the_application_reaches_the_built_in_plugins_only_through_the_registry() -> None:
    for path, names in imported_modules(ROOT / "rlgen_plugins" / "cli").items():
        plugins = [n for n in names if n.startswith(("rlgen_plugins.rainbow", "rlgen_plugins.ddpm"))]
        assert not plugins, (path, plugins)


def test_every_module_stays_under_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for folder in ("policies", "buffers", "diffusion", "rlgen_plugins")
            for p in (ROOT / folder).rglob("*.py") if (n := len(p.read_text().splitlines())) >= 400}
    long.update({p.name: n for p in ROOT.glob("*.py") if (n := len(p.read_text().splitlines())) >= 400})
    assert long == {}


def test_top_level_modules_are_the_installed_ones() -> None:
    """registry.py and the modules it is split into are installed (pyproject's py-modules)."""
    tomllib = pytest.importorskip("tomllib")
    installed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"])
    assert installed == {p.stem for p in ROOT.glob("*.py")}

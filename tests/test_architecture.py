"""The house: no import cycles anywhere in ``relay`` (the layer order itself is an
import-linter contract in pyproject.toml, run by ``make lint``)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp


def test_no_module_of_the_relay_imports_itself_back() -> None:
    """For every direct import a -> b, no chain leads from b back to a (the package root,
    whose ``create_app`` imports the factory lazily, aside)."""
    graph = grimp.build_graph("relay")
    cycles = sorted(
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if "relay" not in (a, b) and graph.chain_exists(importer=b, imported=a)
    )
    assert cycles == []


def test_bench_and_harness_never_import_the_tests() -> None:
    """bench/ and harness/ stand on the package and the harness, never on tests/ (a
    user's benchmark must not depend on what the test suite happens to hold)."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted([*root.glob("bench/*.py"), *root.glob("harness/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{path.relative_to(root)}:{node.lineno} {n}"
                for n in names
                if n == "tests" or n.startswith("tests.")
            ]
    assert offenders == []

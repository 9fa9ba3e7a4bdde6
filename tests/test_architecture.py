"""The house: no import cycles anywhere in ``relay`` (the layer order itself is an
import-linter contract in pyproject.toml, run by ``make lint``)."""

from __future__ import annotations

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

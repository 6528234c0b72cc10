"""The package layout: old module paths forward with a warning; modules stay readable."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "egg"

MOVED = {
    "egg.zoom": ("ground", "egg.method.zoom"), "egg.regions": ("extract_regions", "egg.method.regions"),
    "egg.stopping": ("SpatialEntropyRule", "egg.method.stopping"), "egg.relevance": ("relevance", "egg.method.relevance"),
    "egg.objectives": ("entropy", "egg.method.objectives"), "egg.experiments": ("run", "egg.runs"),
    "egg.runner": ("merge", "egg.runs.runner"), "egg.cost": ("CostReport", "egg.runs.cost"),
    "egg.viz": ("method_figure", "egg.figures.method"), "egg.plots": ("main_results", "egg.figures.results"),
    "egg.explorer": ("Explorer", "egg.figures.explorer"), "egg.testbed": ("measure", "egg.synthetic.checks"),
    "egg.benchmarks": ("load", "egg.datasets"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_forward_with_a_deprecation_warning(old):
    name, new = MOVED[old]
    mod = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*{new}"):
        obj = getattr(mod, name)
    assert obj is getattr(importlib.import_module(new), name)


def test_regions_box_helpers_still_reachable_from_the_old_path():
    import egg.regions

    with pytest.warns(DeprecationWarning):
        from egg.regions import clamp_aspect
    from egg.method.boxes import clamp_aspect as new

    assert clamp_aspect is new and egg.regions is not None


def test_bench_is_the_synthetic_package():
    import egg
    import egg.bench
    import egg.synthetic

    assert egg.bench is egg.synthetic and egg.bench.load is egg.synthetic.load


def test_no_module_over_500_lines_and_long_functions_say_why():
    for f in PKG.rglob("*.py"):
        src = f.read_text()
        assert src.count("\n") <= 500, f"{f.relative_to(PKG)} has {src.count(chr(10))} lines"
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                assert "over 80" in (ast.get_docstring(node) or "").replace("\n", " ").replace("Over", "over"), \
                    f"{f.relative_to(PKG)}:{node.name} is {node.end_lineno - node.lineno + 1} lines"

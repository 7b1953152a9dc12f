"""The architecture's rules hold (docs/architecture.md): the import-linter contracts in
pyproject.toml's `[tool.importlinter]`, checked on the code as it is.

- adapters on top of projections (the read side), projections on top of the domain;
- the domain imports nothing of the outside world (HTTP, SQL, the Stripe SDK, the CLI);
- the read side imports no adapter: only the domain and the ports it declares;
- no import cycles among the domain's modules;
- inside `adapters/`: the Stripe readers know no other adapter, storage no use case, and use
  cases no entry point (HTTP, console, command line).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the packages are found from here, as `lint-imports` finds them
    monkeypatch.syspath_prepend(str(ROOT))
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_no_function_dodges_an_import_cycle_in_the_domain() -> None:
    """An import inside a function hides a cycle from the reader (and may from the linter's
    graph): the domain imports at the top of its modules only."""
    hidden = [
        f"{path.name}:{node.lineno}"
        for path in sorted((ROOT / "domain").glob("*.py"))
        for function in ast.walk(ast.parse(path.read_text()))
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("domain")
    ]
    assert hidden == []

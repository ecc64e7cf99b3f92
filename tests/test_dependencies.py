"""Every import of the package code is declared in pyproject.toml (read with ast; nothing is imported).

A top-level module passes when it is the standard library, first-party, provided by a distribution that
pyproject.toml declares (import names mapped to distributions with importlib.metadata), or an optional import
guarded by ``try: ... except ImportError:`` whose handler names the package in a message (raised, returned or
logged). Modules looked up by name (``importlib.util.find_spec("x")``, ``pytest.importorskip("x")``) count too.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"benchmark", "baselines", "methods", "tests"}
PACKAGE_DIRS = ("benchmark", "baselines", "methods")
BY_NAME = {"find_spec", "import_module", "importorskip"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\s;<>=!~\[(@]", req.strip(), maxsplit=1)[0])


def declared() -> tuple[set[str], set[str]]:
    """(runtime dependencies, test-extra dependencies) of pyproject.toml, normalised distribution names."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    test = {_requirement_name(r) for r in project.get("optional-dependencies", {}).get("test", [])}
    return runtime, test


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def _guarded(tries: list[ast.Try], module: str, dists: set[str]) -> bool:
    """Inside ``try`` with an ``except ImportError`` handler whose string constants name the package."""
    wanted = {module.lower(), *dists}
    for t in tries:
        for h in t.handlers:
            if not _catches_import_error(h):
                continue
            text = " ".join(
                n.value.lower() for n in ast.walk(h) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            )
            if any(w in text or w.replace("-", "_") in text for w in wanted):
                return True
    return False


def imports_of(source: str, by_name: set[str] = BY_NAME) -> list[tuple[str, int, list[ast.Try]]]:
    """(top-level module, line, enclosing ``try`` statements whose body holds the import) for one file."""
    tree = ast.parse(source)
    consts = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    out: list[tuple[str, int, list[ast.Try]]] = []

    def visit(node: ast.AST, tries: list[ast.Try]) -> None:
        if isinstance(node, ast.Import):
            out.extend((a.name.split(".")[0], node.lineno, tries) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], node.lineno, tries))
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            arg = node.args[0]
            value = arg.value if isinstance(arg, ast.Constant) else consts.get(getattr(arg, "id", ""))
            if name in by_name and isinstance(value, str) and not value.startswith("."):
                out.append((value.split(".")[0], node.lineno, tries))
        if isinstance(node, ast.Try):
            for child in node.body:
                visit(child, [*tries, node])
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, tries)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, tries)

    visit(tree, [])
    return out


def undeclared(files: list[Path], allowed: set[str], by_name: set[str] = BY_NAME) -> list[str]:
    dist_of = md.packages_distributions()
    problems = []
    for f in files:
        for module, line, tries in imports_of(f.read_text(), by_name):
            if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
                continue
            dists = {_norm(d) for d in dist_of.get(module, [])}
            # a declared package not installed on this Python (e.g. tomli on 3.11): import name = its name
            if dists & allowed or (not dists and _norm(module) in allowed) or _guarded(tries, module, dists):
                continue
            where = f"{f.relative_to(REPO) if f.is_relative_to(REPO) else f}:{line}"
            found = f" (from {', '.join(sorted(dists))})" if dists else " (no installed distribution provides it)"
            problems.append(f"{where}: imports {module!r}{found}, not declared in pyproject.toml")
    return problems


def _files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (REPO / d).rglob("*.py"))


def test_package_imports_are_declared_runtime_dependencies():
    runtime, _ = declared()
    files = _files(*PACKAGE_DIRS)
    assert len(files) > 20
    assert undeclared(files, runtime) == []


def test_test_imports_are_declared_in_the_test_extra():
    runtime, test = declared()
    # find_spec in tests probes for absence (tests/test_core.py: nothing shadows HF `datasets`), so not counted
    assert undeclared(_files("tests"), runtime | test, {"importorskip", "import_module"}) == []


def test_the_check_catches_undeclared_and_accepts_guarded_imports(tmp_path):
    runtime, _ = declared()
    f = tmp_path / "_probe_dependencies.py"
    cases = {
        "import numpy\nfrom os import path\nfrom . import x\n": [],
        "import sklearn\n": ["'sklearn'"],
        "import importlib.util\nP = 'skimage'\nimportlib.util.find_spec(P)\n": ["'skimage'"],
        "try:\n    import sklearn\nexcept ImportError as e:\n"
        "    raise RuntimeError('pip install scikit-learn for this metric') from e\n": [],
        "try:\n    import sklearn\nexcept ImportError:\n    pass\n": ["'sklearn'"],  # silent: not a guard
        "try:\n    import sklearn\nexcept ValueError:\n    raise RuntimeError('scikit-learn')\n": ["'sklearn'"],
    }
    for source, expected in cases.items():
        f.write_text(source)
        got = undeclared([f], runtime)
        assert len(got) == len(expected), (source, got)
        for e, g in zip(expected, got):
            assert e in g and "_probe_dependencies.py" in g


@pytest.mark.parametrize("req", ["torch>=2.4", "open-clip-torch>=3", "tomli>=2; python_version < '3.11'", "a[b]==1"])
def test_requirement_names(req):
    assert _requirement_name(req) in {"torch", "open-clip-torch", "tomli", "a"}

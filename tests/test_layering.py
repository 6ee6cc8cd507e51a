"""Pure packages must not import I/O: no socket, fcntl, asyncio, threading, time, select,
ssl, subprocess, pyroute2, and nothing from tunkit.io or tunkit.services.

The check is static (AST over every module file), so a lazy import inside a function
is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "tunkit"
PURE_PACKAGES = ["packet", "p2p", "wireguard", "proxy"]
FORBIDDEN = {
    "socket", "fcntl", "asyncio", "threading", "time", "select", "selectors", "ssl",
    "subprocess", "pyroute2", "signal", "multiprocessing", "tunkit.io", "tunkit.services",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # relative import: resolve against the package path
            pkg = path.relative_to(SRC.parent).with_suffix("").parts[: -node.level]
            names.add(".".join([*pkg, node.module or ""]).rstrip("."))
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_pure_package_imports_no_io(package: str) -> None:
    files = sorted((SRC / package).rglob("*.py"))
    assert files, f"no modules found in tunkit.{package}"
    bad = {f"{f.relative_to(SRC)}: {n}" for f in files for n in _imports(f) if _forbidden(n)}
    assert not bad, f"pure package imports I/O modules: {sorted(bad)}"


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import socket\n    return socket\n")
    assert "socket" in _imports(probe)
    assert _forbidden("socket") and not _forbidden("socketserverish")

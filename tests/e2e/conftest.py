"""Fixtures for the e2e tier: root, real tools, and a throwaway :class:`tunkit.lab.Lab`.

Every e2e test builds its topology in its own namespaces (prefix ``tke`` + PID) through the
``lab`` fixture, which always tears down, pass or fail. Nothing touches the root namespace.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from tunkit.lab import Lab


def need_tool_path(name: str) -> str:
    """The path of tool ``name``, or skip the test (the root conftest turns e2e skips into
    failures when running as root, so a missing tool is never silent)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"missing tool {name}")
    return path


@pytest.fixture
def need_tool() -> Callable[[str], str]:
    """``need_tool("iperf3")`` returns the tool's path or skips the test.

    A fixture (not an import) because tests/ has no ``__init__.py``: ``from conftest import``
    would be ambiguous between tests/conftest.py and tests/e2e/conftest.py.
    """
    return need_tool_path


@pytest.fixture
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("e2e tests need root (CAP_NET_ADMIN and network namespaces)")


@pytest.fixture
def lab(require_root: None) -> Iterator[Lab]:
    with Lab(prefix="tke") as the_lab:
        yield the_lab

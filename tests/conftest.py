"""Suite-wide rules.

When the suite runs as root (as CI does), an e2e test that was *skipped* is a failure:
a missing tool must never silently turn the e2e tier off.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Timing-based hypothesis checks are flaky on a shared 2-core machine; correctness is what
# the fuzz tests assert, performance lives in bench/.
settings.register_profile(
    "tunkit", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("tunkit")

_skipped_e2e: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "tests/e2e/" in report.nodeid.replace("\\", "/"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped_e2e.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.geteuid() == 0 and _skipped_e2e and os.environ.get("TUNKIT_ALLOW_E2E_SKIP") != "1":
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["running as root, but e2e tests were skipped (make test must run them):"]
        lines += [f"  {s}" for s in _skipped_e2e]
        if tr is not None:
            for line in lines:
                tr.write_line(line, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

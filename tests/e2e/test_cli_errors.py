"""Bad input gets one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tunkit.lab import Lab

pytestmark = pytest.mark.e2e


def tunkit(*argv: str, host=None, user: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tunkit", *argv]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    if host is not None:
        return host.run(cmd, check=False, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_invalid_cidr() -> None:
    assert_one_line_error(tunkit("sniff", "--create", "tk0", "--address", "10.0.0.300/24"), "invalid CIDR", "10.0.0.300/24")
    assert_one_line_error(tunkit("sniff", "--create", "tk0", "--address", "10.0.0.1"), "invalid CIDR")


def test_name_too_long(lab: Lab) -> None:
    host = lab.add_host("a")
    proc = tunkit("sniff", "--create", "a-name-that-is-far-too-long", "--address", "10.0.0.1/24", host=host)
    assert_one_line_error(proc, "a-name-that-is-far-too-long", "15")


def test_missing_device(lab: Lab) -> None:
    host = lab.add_host("a")
    assert_one_line_error(tunkit("sniff", "--attach", "tknothere0", host=host), "no such device", "tknothere0")


def test_not_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    proc = tunkit("sniff", "--create", "tk0", "--address", "10.0.0.1/24", user="65534")
    assert_one_line_error(proc, "needs root")


def test_usage_error_is_one_line() -> None:
    proc = tunkit("sniff", "--bogus-flag")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
def test_bad_key_for_pubkey() -> None:
    proc = subprocess.run([sys.executable, "-m", "tunkit", "pubkey"], input="not-base64!!\n",
                          capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, "key")



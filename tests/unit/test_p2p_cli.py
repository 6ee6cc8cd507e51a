"""p2p command line: flag validation gives one clear ConfigError; gen-certs runs without root."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tunkit.errors import ConfigError
from tunkit.services.p2p_cli import _add_arguments, main, run_p2p


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    _add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-s"], "needs a device"),
        (["-i", "tun0"], "-s (server) or -c HOST"),
        (["-i", "tun0", "-s", "--address", "10.0.0.1/24"], "need --create"),
        (["-i", "tun0", "-s", "--tls"], "--tls needs --cert"),
        (["-i", "tun0", "-s", "--udp", "--tls", "--cert", "a", "--key", "b", "--ca", "c"], "cannot be combined"),
        (["-i", "tun0", "-s", "--cert", "a"], "only make sense with --tls"),
        (["-i", "tun0", "-c", "h", "-p", "70000"], "invalid port"),
        (["-i", "tun0", "-s", "--create", "--mtu", "20"], "invalid MTU"),
    ],
)
def test_bad_flags_are_one_config_error(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_p2p(parse(*argv))


def test_defaults_match_simpletun() -> None:
    args = parse("-i", "tun0", "-c", "10.0.0.1")
    assert args.port == 55555 and args.tap is False and args.mode == "auto"
    assert parse("-i", "tap0", "-a", "-s").tap is True


def test_gen_certs_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gen-certs", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "client.key").exists()
    assert main(["gen-certs", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to overwrite" in err

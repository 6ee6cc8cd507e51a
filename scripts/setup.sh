#!/usr/bin/env bash
# Installs what tunkit needs on a fresh Debian machine: the apt packages that the demo,
# the e2e tests and the benchmarks use, and a venv (.venv) with tunkit and its pip deps.
# Idempotent: each step is skipped when it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iproute2 iputils-ping iperf3 tcpdump nftables wireguard-tools wireguard-go
              microsocks dante-server dnsutils curl procps psmisc openssl python3-venv)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing apt packages (${missing[*]}); run as root to install them" >&2
  else
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
# dante-server's package starts a daemon on install on some systems; we only want the binary.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now danted >/dev/null 2>&1 || true; fi

PY=${PYTHON:-python3}
stamp=.venv/.tunkit-installed
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing tunkit and its pip dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi

#!/usr/bin/env bash
# Everything a fresh machine needs: Debian packages (Prometheus, promtool,
# Alertmanager, amtool) and the Python package with its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager >/dev/null
fi
python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e '.[dev]'

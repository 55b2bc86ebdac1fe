#!/usr/bin/env bash
# The test suite: unit, property, doctest, contract, broker integration and
# Prometheus/Alertmanager tests (the README's test command runs this after setup).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m pytest -p no:cacheprovider "$@"

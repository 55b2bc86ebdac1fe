#!/usr/bin/env bash
# Fault injection on the embedded broker, loopback only: two workers behind a TCP fault
# proxy; kill -9 (steady, in a rebalance, in table recovery), SIGSTOP past the session
# timeout, latency, blackouts, connection resets; outputs checked against replay.
# Results: bench/results/faults.json and faults.md. About 6-10 minutes (--quick: ~2).
#
#   bash scripts/faults.sh                        # 50,000+ events, 3,000 customers, 10 kills
#   bash scripts/faults.sh --quick                # a small run
#   bash scripts/faults.sh --seed 3 --kills 12    # any option of python -m bench.faults
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout --kill-after=30 "${RISKWATCH_FAULTS_TIMEOUT:-1800}" python3 -m bench.faults "$@"

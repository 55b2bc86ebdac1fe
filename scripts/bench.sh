#!/usr/bin/env bash
# Benchmarks on the embedded broker: the suite (raw aiokafka, bare Faust, naive Faust,
# the Riskwatch worker, replay; latency, state, recovery, profile), then the replay
# scaling grid, then the delinquency engine in-process (repayment throughput, watermark
# sweep at 10k/100k/1M accounts). Results go to bench/results/ (latest.json/.md,
# throughput.png, profile.md, scaling.json/.md/.png, delinquency.json/.md). Takes 15-20
# minutes; run on a quiet machine.
#
#   bash scripts/bench.sh                 # everything
#   bash scripts/bench.sh --quick         # a smoke run (about a minute)
#   bash scripts/bench.sh --events 20000  # any option of python -m bench.run
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
    python3 -m bench.run --with-scaling
    exec python3 -m bench.delinquency
fi
exec python3 -m bench.run "$@"

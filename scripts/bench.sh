#!/usr/bin/env bash
# Benchmarks on the embedded broker: the suite (raw aiokafka, bare Faust, naive Faust,
# the Riskwatch worker, replay; latency, state, recovery, profile), then the replay
# scaling grid. Results go to bench/results/ (latest.json/.md, throughput.png,
# profile.md, scaling.json/.md/.png). Takes 12-15 minutes; run on a quiet machine.
#
#   bash scripts/bench.sh                 # everything
#   bash scripts/bench.sh --quick         # a smoke run (about a minute)
#   bash scripts/bench.sh --events 20000  # any option of python -m bench.run
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
    set -- --with-scaling
fi
exec python3 -m bench.run "$@"

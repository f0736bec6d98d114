#!/bin/bash
# Benchmark: plain Dovecot, mail_crypt and popvault side by side in one
# private Dovecot on 127.0.0.1. Builds the plugin and the bench clients,
# then runs bench/bench.py; results go to build/bench-results/<timestamp>/.
#   scripts/bench.sh --quick        smoke run, well under a minute
#   scripts/bench.sh                full sizes (docs/performance.md)
#   scripts/bench.sh --callgrind    also pop3 instruction counts
# Every other option is bench/bench.py's (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
make -s -C bench O="$PWD/build/bench" >/dev/null
exec python3 bench/bench.py --build-dir build "$@"

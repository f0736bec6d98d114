#!/bin/bash
# Crash points (issue 17, docs/fault-injection.md): every operation that
# changes mail, keys or state, killed with SIGKILL at each of its
# mutating system calls (strace), then the invariants. Prints per
# operation: crash points, violations, time.
#   scripts/crash-all.sh             all of them (make crash-all)
#   scripts/crash-all.sh --ci        the CI subset (make crash-ci): every
#                                    crash point of the key commands, the
#                                    LOGIN-DELAY dict write, 6 points
#                                    spread over each other operation
#   scripts/crash-all.sh -k NAME     only operations whose name has NAME
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
exec python3 tests/crash/crashpoints.py --build-dir build -j 2 "$@"

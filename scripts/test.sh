#!/bin/bash
# The whole test suite: set-up and build, unit tests under valgrind, then
# the integration tests against real Dovecot instances on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cd build
echo "== unit tests (lib-test, valgrind)"
make check
echo "== integration tests (real Dovecot on 127.0.0.1)"
python3 ../tests/integration/run.py --build-dir . "$@"

#!/bin/bash
# Builds popvault and runs a private Dovecot on 127.0.0.1 with one demo
# user per policy and some sample mail. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec python3 tests/integration/demo.py --build-dir build "$@"

#!/bin/bash
# The whole test suite: set-up and build, unit tests under valgrind, then
# the integration tests against real Dovecot instances on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cd build
echo "== unit tests (lib-test, valgrind)"
make check
echo "== fuzz targets over their corpora (libFuzzer, ASan+UBSan)"
make fuzz-regress
echo "== make distcheck (the release tarball builds and passes make check)"
make distcheck >distcheck.log 2>&1 || { tail -50 distcheck.log; exit 1; }
echo "distcheck ok"
echo "== sanitizers: encryption, hostile input and concurrency tests against an ASan+UBSan build"
bash ../scripts/check-sanitize.sh -k test_encryption -k test_keys -k test_secrets -k test_hostile \
	-k test_concurrency -k test_capa_login_delay
if [ $# -eq 0 ]; then
	echo "== crash points: every key command and a subset of the rest, killed at each mutating syscall"
	python3 ../tests/crash/crashpoints.py --build-dir . --ci -j 2
fi
echo "== integration tests (real Dovecot on 127.0.0.1; Thunderbird included, about 35 s)"
POPVAULT_THUNDERBIRD=1 python3 ../tests/integration/run.py --build-dir . "$@"

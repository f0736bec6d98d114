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
	echo "== fault injection: 300 kill -9 points in pop3, lmtp, sweep and encrypt"
	python3 ../tests/fault/fault_inject.py --build-dir . --points 300 --seed 1
fi
echo "== integration tests (real Dovecot on 127.0.0.1; Thunderbird included, about 35 s)"
POPVAULT_THUNDERBIRD=1 python3 ../tests/integration/run.py --build-dir . "$@"
echo "== Dovecot 2.4 (Debian 13 chroot, docs/dovecot-24.md): -Werror build, unit tests, integration suite"
# The chroot is cached in /var/tmp; a fresh machine builds it first (75-150 s).
cd ..
args=("$@")
[ $# -gt 0 ] || args=(-k test_)
scripts/test-dovecot24.sh "${args[@]}" 2>&1 | tee build/dovecot24.log
echo "Dovecot 2.4: $(grep -E '^[0-9]+ passed, [0-9]+ failed' build/dovecot24.log | tail -n1)"

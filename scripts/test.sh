#!/bin/bash
# The whole test suite: set-up and build, unit tests under valgrind, then
# the integration tests against real Dovecot instances on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if dpkg --compare-versions "$(dovecot --version | cut -d' ' -f1)" ge 2.4; then
	# Debian 13: the host's own Dovecot is 2.4 and Debian 13 has no 2.3, so
	# the 2.4 part of a Debian 12 run runs here, on the host, without a
	# chroot. Sanitizers, crash points and distcheck run on Debian 12 (CI).
	echo "== Dovecot $(dovecot --version) on this host: -Werror build, unit tests, fuzz corpora, integration suite"
	args=("$@")
	[ $# -gt 0 ] || args=(-k test_)
	scripts/test-dovecot24.sh "${args[@]}" 2>&1 | tee build/dovecot24.log
	echo "== integration counts: dovecot-2.4 only (no Dovecot 2.3 on Debian 13)"
	grep -E '^[0-9]+ passed, [0-9]+ failed' build/dovecot24.log | tail -n1
	exit 0
fi
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
echo "== integration tests on Dovecot $(dovecot --version) (real Dovecot on 127.0.0.1; Thunderbird included, about 35 s)"
POPVAULT_THUNDERBIRD=1 python3 ../tests/integration/run.py --build-dir . "$@" 2>&1 |
	tee dovecot23.log
echo "== Dovecot 2.4 (Debian 13 chroot, docs/dovecot-24.md): -Werror build, unit tests, integration suite (Thunderbird included)"
# The chroot is cached in /var/tmp; a fresh machine builds it first (75-150 s).
cd ..
args=("$@")
[ $# -gt 0 ] || args=(-k test_)
POPVAULT_THUNDERBIRD=1 scripts/test-dovecot24.sh "${args[@]}" 2>&1 | tee build/dovecot24.log
echo "== upgrade 2.3 -> 2.4: mail written by the 2.3 build, read by the 2.4 build (12-75 s)"
scripts/test-upgrade.sh 2>&1 | tee build/upgrade.log
# counts per host and of the upgrade, then all together as the last line
count() { grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -n1; }
echo "== integration counts per host"
echo "dovecot-2.3: $(count build/dovecot23.log)"
echo "dovecot-2.4: $(count build/dovecot24.log)"
echo "upgrade-2.3-to-2.4: $(count build/upgrade.log)"
cat build/dovecot23.log build/dovecot24.log build/upgrade.log | grep -E '^[0-9]+ passed, [0-9]+ failed' |
	awk -F'[ ,]+' '{p += $1; f += $3; s += $5}
		END {printf "%d passed, %d failed, %d skipped\n", p, f, s}'

#!/bin/bash
# The integration suite against an AddressSanitizer + UBSan build of the
# plugin, loaded into Debian's uninstrumented Dovecot: the ASan runtime is
# preloaded into Dovecot's processes (tests/integration/harness.py,
# sanitizer_env()). Fails on any test failure and on any sanitizer
# report, even one from a child process whose crash no test noticed.
#   scripts/check-sanitize.sh            the whole suite
#   scripts/check-sanitize.sh -k crypt   only tests whose name has "crypt"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
mkdir -p build-sanitize
cd build-sanitize
if [ ! -f Makefile ] || [ ../configure -nt Makefile ]; then
	../configure --enable-sanitizers >configure.log 2>&1 ||
		{ cat configure.log; exit 1; }
fi
make -j"$(nproc)" >make.log 2>&1 || { cat make.log; exit 1; }

logdir=$(mktemp -d /tmp/popvault-sanitize.XXXXXX)
# Dovecot's processes run as several users
chmod 1777 "$logdir"
trap 'rm -rf "$logdir"' EXIT
POPVAULT_SANITIZER_PRELOAD=$(readlink -f "$(gcc -print-file-name=libasan.so)")
export POPVAULT_SANITIZER_PRELOAD POPVAULT_SANITIZER_LOG_DIR="$logdir"

rc=0
# the benchmark smoke test times the uninstrumented bench clients against
# an instrumented server: slow, and not about memory safety
python3 ../tests/integration/run.py --build-dir . -x test_bench_smoke \
	-x test_debian_package "$@" ||
	rc=$?
if compgen -G "$logdir/report*" >/dev/null; then
	cat "$logdir"/report*
	echo "sanitize: sanitizer reports above" >&2
	rc=1
else
	echo "sanitize: no sanitizer report"
fi
exit $rc

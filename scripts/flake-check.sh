#!/bin/bash
# Runs the integration suite N times in a row from a clean build and
# reports the failures of each run and the slowest test (issue 17).
#   scripts/flake-check.sh N [run.py options, e.g. -k test_keys]
# Exit status 0 only when all N runs passed.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: scripts/flake-check.sh N [run.py options]}
shift
# packages and configure script as for any build, then a clean build of
# its own (./build, the developer's, is left alone)
bash scripts/setup.sh >/dev/null
rm -rf build-flake
mkdir build-flake
(cd build-flake && ../configure --enable-werror >configure.log 2>&1 &&
	make -j"$(nproc)" >make.log 2>&1) ||
	{ tail -30 build-flake/make.log build-flake/configure.log; exit 1; }
logdir=$(mktemp -d /tmp/popvault-flake.XXXXXX)
failed_runs=0
for i in $(seq 1 "$n"); do
	start=$(date +%s)
	if python3 tests/integration/run.py --build-dir build-flake "$@" \
		>"$logdir/run$i.log" 2>&1; then
		status=ok
	else
		status=FAILED
		failed_runs=$((failed_runs + 1))
	fi
	echo "run $i/$n: $status, $(tail -1 "$logdir/run$i.log"), $(( $(date +%s) - start )) s"
	grep '^FAIL ' "$logdir/run$i.log" | sed 's/^/  /' || true
done
echo "slowest tests over all runs:"
cat "$logdir"/run*.log | sed -n 's/^\(ok  \|FAIL\) *\(.*\) (\([0-9.]*\)s)$/\3 \2/p' |
	sort -rn | awk '!seen[$2]++' | sed -n '1,5s/^/  /p'
echo "$failed_runs of $n runs failed (logs in $logdir)"
[ "$failed_runs" -eq 0 ]

#!/bin/bash
# Runs the integration suite N times in a row from a clean build and
# reports the failures of each run and the slowest test (issue 17).
#   scripts/flake-check.sh N [run.py options, e.g. -k test_keys]
# Exit status 0 only when all N runs passed.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: scripts/flake-check.sh N [run.py options]}
shift
rm -rf build
bash scripts/setup.sh >/dev/null
logdir=$(mktemp -d /tmp/popvault-flake.XXXXXX)
failed_runs=0
for i in $(seq 1 "$n"); do
	start=$(date +%s)
	if python3 tests/integration/run.py --build-dir build "$@" \
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
	sort -rn | awk '!seen[$2]++' | head -5 | sed 's/^/  /'
echo "$failed_runs of $n runs failed (logs in $logdir)"
[ "$failed_runs" -eq 0 ]

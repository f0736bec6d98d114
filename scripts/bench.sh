#!/bin/bash
# Benchmark: plain Dovecot, mail_crypt and popvault side by side in one
# private Dovecot on 127.0.0.1. Builds the plugin and the bench clients,
# then runs bench/bench.py; results go to build/bench-results/<timestamp>/.
#   scripts/bench.sh --quick        smoke run, about a minute
#   scripts/bench.sh                full sizes (docs/performance.md)
#   scripts/bench.sh --callgrind    also pop3 and lmtp instruction counts
#   scripts/bench.sh --dovecot24 ...
#                                   the same against Dovecot 2.4.1 in the
#                                   Debian 13 chroot of scripts/trixie-root.sh
#                                   (from a Debian 12 host); results copied to
#                                   build/bench-results/<timestamp>-dovecot24/
# On a Debian 13 host plain scripts/bench.sh measures the host's 2.4.
# Every other option is bench/bench.py's (--help).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --dovecot24 ]; then
	shift
	root=${POPVAULT_TRIXIE_ROOT:-/var/tmp/popvault-trixie}
	# build24, -Werror, installed into the chroot (2.4 reads settings
	# modules only from its own directory)
	scripts/test-dovecot24.sh --install-only
	stamp=$(date +%Y%m%d-%H%M%S)-dovecot24
	scripts/trixie-root.sh run /bin/sh -c '
		out=$1; shift
		make -s -C bench O="$PWD/build24/bench" >/dev/null &&
		exec python3 bench/bench.py --build-dir build24 --out "$out" "$@"
	' bench "/popvault/build24/bench-results/$stamp" "$@"
	mkdir -p build/bench-results
	cp -a "$root/popvault/build24/bench-results/$stamp" build/bench-results/
	ln -sfn "$stamp" build/bench-results/latest-dovecot24
	echo "bench: results copied to build/bench-results/$stamp"
	exit 0
fi

bash scripts/setup.sh >/dev/null
if dovecot --version | grep -q '^2\.4'; then
	# as in the chroot: 2.4 loads settings modules only from its own
	# directory, and the harness runs only against an installed build
	make -s -C build install >/dev/null
fi
make -s -C bench O="$PWD/build/bench" >/dev/null
exec python3 bench/bench.py --build-dir build "$@"

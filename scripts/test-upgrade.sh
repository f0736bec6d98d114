#!/bin/bash
# The Debian 12 -> 13 upgrade test (issue 16, docs/dovecot-24.md): Dovecot
# 2.3 with ./build writes a provider's mail root on this host, the files
# are copied into the Debian 13 chroot as an upgrade leaves them (same
# path, owners, modes and mtimes), and Dovecot 2.4 with the chroot's
# installed build24 must read everything back the same.
#
#   scripts/test-upgrade.sh      after scripts/setup.sh and
#                                scripts/test-dovecot24.sh (which builds
#                                and installs build24 in the chroot)
#
# Ends with "N passed, N failed" like the integration suites.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${POPVAULT_TRIXIE_ROOT:-/var/tmp/popvault-trixie}
[ -d "$ROOT/popvault/build24" ] ||
	{ echo "upgrade: no build24 in $ROOT: run scripts/test-dovecot24.sh first"
	  echo "0 passed, 1 failed"; exit 1; }

start=$(date +%s)
# the same absolute path on both sides, as /var/vmail across an upgrade
mailroot=$(mktemp -d /var/tmp/popvault-upgrade.XXXXXX)
cleanup() {
	[ -n "${POPVAULT_KEEP_TMP:-}" ] || rm -rf "$mailroot" "$mailroot.log" "$ROOT$mailroot"
}
trap cleanup EXIT
rmdir "$mailroot"

echo "upgrade: phase 1 on Dovecot $(dovecot --version)"
python3 tests/upgrade/phase1.py --build-dir build --mail-root "$mailroot" ||
	{ echo "0 passed, 1 failed"; exit 1; }
echo "upgrade: phase 1 took $(($(date +%s) - start)) s"
mkdir -p "$ROOT$mailroot"
# (the retention probe ran doveadm under a shifted clock, which dates
# Dovecot's tmp-scan stamps in the future: tar need not say so)
tar -C "$mailroot" --numeric-owner -cpf - . |
	tar -C "$ROOT$mailroot" --numeric-owner --same-owner \
		--warning=no-timestamp -xpf -
echo "upgrade: phase 2 in $ROOT"
rc=0
scripts/trixie-root.sh run python3 tests/upgrade/phase2.py \
	--build-dir build24 --mail-root "$mailroot" | tee "$mailroot.log" ||
	rc=$?
# a phase 2 that died before counting still counts as a failure
grep -qE '^[0-9]+ passed, [0-9]+ failed' "$mailroot.log" ||
	{ echo "0 passed, 1 failed"; rc=1; }
echo "upgrade: 2.3 -> 2.4 took $(($(date +%s) - start)) s"
exit $rc

#!/bin/bash
# Builds and tests popvault against Dovecot 2.4.1 in the Debian 13 chroot
# of scripts/trixie-root.sh (created on first use, cached afterwards).
#
#   scripts/test-dovecot24.sh                  build (-Werror), unit tests
#   scripts/test-dovecot24.sh -k NAME ...      and the integration tests
#                                              whose name contains NAME
#   scripts/test-dovecot24.sh --install-only   build and install, no tests
#                                              (scripts/bench.sh --dovecot24)
#
# The build lives in the chroot's copy of the tree (/popvault/build24) and
# is installed into the chroot's /usr/lib/dovecot/modules: Dovecot 2.4
# loads settings modules only from its compiled-in directory.
#
# On a host whose own Dovecot is 2.4 (Debian 13) there is no chroot: the
# same steps run on the host, in ./build (scripts/setup.sh's), and install
# into the host's Dovecot module directory.
set -euo pipefail
cd "$(dirname "$0")/.."
check=yes
if [ "${1:-}" = --install-only ]; then
	check=no
	shift
fi

if dpkg --compare-versions "$(dovecot --version 2>/dev/null | cut -d' ' -f1)" ge 2.4; then
	in_24() { BUILD=build /bin/bash -c "$@"; }
else
	scripts/trixie-root.sh create
	# the chroot starts from an empty environment: the Thunderbird switch
	# is passed on
	in_24() { scripts/trixie-root.sh run /usr/bin/env BUILD=build24 \
		POPVAULT_THUNDERBIRD="${POPVAULT_THUNDERBIRD:-}" /bin/bash -c "$@"; }
fi
start=$(date +%s)
in_24 '
set -euo pipefail
check=$1
shift
mkdir -p m4
if [ ! -x configure ] || [ configure.ac -nt configure ] ||
   [ Makefile.am -nt configure ]; then
	autoreconf -fi 2>&1 | grep -v -e "dovecot.m4" -e "obsolete" -e "^ " || true
fi
mkdir -p "$BUILD"
cd "$BUILD"
if [ ! -f Makefile ] || [ ../configure -nt Makefile ]; then
	../configure --enable-werror >configure.log 2>&1 ||
		{ cat configure.log; exit 1; }
fi
make -j"$(nproc)" >make.log 2>&1 || { cat make.log; exit 1; }
if grep -i "warning:" make.log; then
	echo "popvault: compiler warnings on Dovecot 2.4 (see above)" >&2
	exit 1
fi
echo "popvault: built against Dovecot $(dovecot --version)"
if [ "$check" = yes ]; then
	make check >check.log 2>&1 || { cat check.log; echo "popvault: unit tests failed" >&2; exit 1; }
	grep "tests failed" check.log
	echo "== fuzz targets over their corpora on Dovecot $(dovecot --version) (libFuzzer, ASan+UBSan)"
	make fuzz-regress
fi
make install >/dev/null
if [ $# -gt 0 ]; then
	cd ..
	python3 tests/integration/run.py --build-dir "$BUILD" "$@"
fi
' test-dovecot24 "$check" "$@"
echo "popvault: Dovecot 2.4 run took $(($(date +%s) - start)) s"

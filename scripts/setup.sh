#!/bin/bash
# Installs what popvault needs to build and test on Debian 12 or 13 (as
# root), then configures and builds it in ./build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES="dovecot-dev dovecot-core dovecot-pop3d dovecot-imapd dovecot-lmtpd
dovecot-sqlite dovecot-ldap dovecot-fts-xapian libsodium-dev libssl-dev autoconf
automake libtool pkg-config make gcc valgrind python3 sqlite3 curl fetchmail
mpop getmail6 openssl faketime redis-server clang libclang-rt-dev dpkg-dev
debhelper fakeroot dh-autoreconf git thunderbird strace e2fsprogs"
if [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ]; then
	# Debian 12, Dovecot 2.3: lucene FTS; debootstrap builds the Debian 13
	# chroot in which scripts/test.sh tests Dovecot 2.4
	PACKAGES="$PACKAGES dovecot-lucene debootstrap"
else
	# Debian 13, Dovecot 2.4: lucene is gone, flatcurve took its place
	PACKAGES="$PACKAGES dovecot-flatcurve"
fi

missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "popvault: missing Debian packages:$missing" >&2
		echo "popvault: run as root, or: apt-get install$missing" >&2
		exit 1
	fi
	echo "popvault: installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	# policy-rc.d keeps the packaged dovecot service from starting: the
	# tests and the demo run their own private instances.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get install -y -q --no-install-recommends $missing
fi

mkdir -p m4
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
	autoreconf -fi 2>&1 | grep -v -e "dovecot.m4" -e "obsolete" -e "^ " || true
fi
mkdir -p build
cd build
if [ ! -f Makefile ] || [ ../configure -nt Makefile ]; then
	../configure --enable-werror ${POPVAULT_CONFIGURE_FLAGS:-} >configure.log 2>&1 ||
		{ cat configure.log; exit 1; }
fi
make -j"$(nproc)" >make.log 2>&1 || { cat make.log; exit 1; }
if grep -i "warning:" make.log; then
	echo "popvault: compiler warnings (see above)" >&2
	exit 1
fi
echo "popvault: built $(pwd)/.libs/lib20_popvault_plugin.so"
if dpkg --compare-versions "$(dovecot --version | cut -d' ' -f1)" ge 2.4; then
	# Dovecot 2.4 reads settings modules only from its own module directory
	# (docs/dovecot-24.md): the demo and the tests need the build installed.
	# Nothing is enabled: /etc/dovecot is not touched.
	if [ "$(id -u)" = 0 ]; then
		make install >install.log 2>&1 || { cat install.log; exit 1; }
		echo "popvault: installed into the module directory of Dovecot $(dovecot --version)"
	else
		echo "popvault: Dovecot 2.4: run 'make -C build install' as root" \
			"before the demo or the tests" >&2
	fi
fi

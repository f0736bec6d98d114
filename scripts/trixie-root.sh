#!/bin/bash
# A Debian 13 (trixie) chroot with Dovecot 2.4, built on a Debian 12 host,
# so that popvault can be compiled and tested against both Dovecots from one
# source tree (issue 16).
#
#   scripts/trixie-root.sh create        build the chroot (cached once complete)
#   scripts/trixie-root.sh run CMD...    copy the source tree to /popvault in
#                                        the chroot and run CMD there (as root)
#   scripts/trixie-root.sh destroy       remove the chroot
#
# The chroot lives in $POPVAULT_TRIXIE_ROOT (default /var/tmp/popvault-trixie),
# outside the source tree. Packages come from the Debian mirror the host's apt
# already uses, read from /etc/apt at run time.
#
# Every mount (proc, /dev, /dev/pts) is made inside a private mount namespace
# (unshare -m) for the duration of one command: the kernel drops them when the
# command ends, even if it is killed, and the trap unmounts them in the normal
# case. Nothing stays mounted on the host.
set -euo pipefail

SELF=$(realpath "$0")
SRC=$(dirname "$(dirname "$SELF")")
ROOT=${POPVAULT_TRIXIE_ROOT:-/var/tmp/popvault-trixie}
SUITE=trixie
STAMP=.popvault-complete
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Bumping this list invalidates the cached chroot (the stamp records it).
PACKAGES="dovecot-core dovecot-dev dovecot-pop3d dovecot-lmtpd dovecot-imapd strace
dovecot-sqlite libsodium-dev libssl-dev build-essential autoconf automake
libtool pkg-config python3 valgrind sqlite3 curl fetchmail faketime
redis-server git ca-certificates dpkg-dev debhelper fakeroot dh-autoreconf
dovecot-flatcurve dovecot-fts-xapian mpop getmail6 openssl e2fsprogs
clang libclang-rt-dev dovecot-ldap thunderbird"

die() { echo "trixie-root: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount)"

# The first Debian archive URI the host's apt uses (not the security one).
host_mirror() {
	local uri=""
	if [ -f /etc/apt/sources.list.d/debian.sources ]; then
		uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' \
			/etc/apt/sources.list.d/debian.sources |
			grep -v -- '-security' | head -n1)
	fi
	if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
		uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++)
			if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
			/etc/apt/sources.list | grep -v -- '-security' | head -n1)
	fi
	[ -n "$uri" ] || die "no Debian mirror found in /etc/apt"
	echo "$uri"
}

stamp_text() { echo "$SUITE $(echo $PACKAGES)"; }

is_complete() {
	[ -f "$ROOT/$STAMP" ] && [ "$(cat "$ROOT/$STAMP")" = "$(stamp_text)" ]
}

# Runs "$@" chrooted in $1 with proc, /dev and /dev/pts mounted in a private
# mount namespace.
in_root() {
	unshare --mount --propagation private -- "$SELF" __inside "$@"
}

# The part of in_root() that runs inside the new mount namespace.
inside() {
	local dir=$1
	MOUNTED=()
	shift
	cleanup() {
		local i
		for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
			umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}"
		done
	}
	trap cleanup EXIT
	mount -t proc proc "$dir/proc"; MOUNTED+=("$dir/proc")
	mount --bind /dev "$dir/dev"; MOUNTED+=("$dir/dev")
	mount --bind /dev/pts "$dir/dev/pts"; MOUNTED+=("$dir/dev/pts")
	chroot "$dir" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" \
		LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		"$@"
}

create() {
	if is_complete; then
		echo "trixie-root: $ROOT is complete (cached)"
		return 0
	fi
	command -v debootstrap >/dev/null || die "install debootstrap"
	local mirror tmp start
	mirror=$(host_mirror)
	tmp="$ROOT.new"
	rm -rf "$tmp"
	start=$(date +%s)
	echo "trixie-root: debootstrap $SUITE into $tmp"
	# debootstrap mounts proc/sys itself; the private namespace guarantees
	# that none of it outlives the run.
	unshare --mount --propagation private -- debootstrap --variant=minbase \
		--keyring="$KEYRING" "$SUITE" "$tmp" "$mirror" >"$ROOT.log" 2>&1 ||
		{ tail -n 30 "$ROOT.log" >&2; die "debootstrap failed (log: $ROOT.log)"; }
	printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$tmp/etc/apt/sources.list"
	# Package scripts must not start services in the chroot; doveconf wants
	# /etc/mtab.
	printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
	chmod +x "$tmp/usr/sbin/policy-rc.d"
	ln -sf /proc/self/mounts "$tmp/etc/mtab"
	cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
	echo "trixie-root: installing packages"
	in_root "$tmp" /bin/sh -c "apt-get update -q && apt-get install -y -q \
		--no-install-recommends $(echo $PACKAGES)" >>"$ROOT.log" 2>&1 ||
		{ tail -n 30 "$ROOT.log" >&2; die "apt-get failed (log: $ROOT.log)"; }
	in_root "$tmp" apt-get clean
	stamp_text >"$tmp/$STAMP"
	rm -rf "$ROOT"
	mv "$tmp" "$ROOT"
	echo "trixie-root: $ROOT ready in $(($(date +%s) - start)) s" \
		"($(du -sh "$ROOT" | cut -f1)), Dovecot $(in_root "$ROOT" dovecot --version)"
}

# Copies the tracked and untracked-but-not-ignored files to /popvault in the
# chroot (mtimes kept, so an existing /popvault/build rebuilds incrementally).
sync_tree() {
	mkdir -p "$ROOT/popvault"
	(cd "$SRC" && git ls-files -z -c -o --exclude-standard |
		xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
		tar --null -T - -cf -) | tar -C "$ROOT/popvault" -xf -
	# a source moved or removed in the tree must not linger in the copy:
	# make check reads the folders (tests/layers/check-layers.py)
	(cd "$ROOT/popvault" && find plugin include -type f \
		\( -name '*.c' -o -name '*.h' \) -print0) |
		while IFS= read -r -d '' f; do
			[ -e "$SRC/$f" ] || rm -f "$ROOT/popvault/$f"
		done
}

run() {
	[ $# -gt 0 ] || die "usage: $0 run CMD..."
	is_complete || die "$ROOT is missing or incomplete: run '$0 create' first"
	sync_tree
	in_root "$ROOT" /bin/sh -c 'cd /popvault && exec "$@"' sh "$@"
}

destroy() {
	# Refuse while anything is mounted below the chroot (a run in progress).
	if grep -q " $ROOT[/ ]" /proc/self/mounts; then
		die "something is mounted under $ROOT"
	fi
	rm -rf "$ROOT" "$ROOT.new" "$ROOT.log"
	echo "trixie-root: removed $ROOT"
}

case "${1:-}" in
__inside) shift; inside "$@" ;;
create) create ;;
run) shift; run "$@" ;;
destroy) destroy ;;
*) die "usage: $0 create | run CMD... | destroy" ;;
esac

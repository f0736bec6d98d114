"""debian/ builds a .deb from a clean export of the tree (what git tracks,
never ./build) that carries both plugins, the example configuration and the
docs, depends on the exact Dovecot ABI, and works: a real Dovecot loading
popvault from the extracted package applies a policy.

The package build takes about a minute (dpkg-buildpackage -b, -j2, no
tests, no debug symbols)."""

import glob
import os
import shutil
import subprocess
import tempfile

from harness import DOVECOT_VERSION, User, dovecot
from policy_util import deliver_numbered, pop3_session

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODULEDIR = "usr/lib/dovecot/modules"
DOCDIR = "usr/share/doc/dovecot-popvault"


def _export(dest):
    """The tracked files (and new, not ignored ones) as the working tree
    has them: a clean source tree without build products."""
    p = subprocess.run(
        ["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
         "--exclude-standard"], capture_output=True)
    if p.returncode == 0:
        names = p.stdout.decode().split("\0")
    else:
        names = _walk_sources()
    for rel in names:
        src = os.path.join(ROOT, rel)
        if not rel or not os.path.isfile(src):
            continue
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


# what autoreconf, configure and make leave in a tree that is not a git
# checkout (e.g. an unpacked CI copy)
# (build-aux/ holds one tracked template, run-test.sh.in, among generated
# files)
GENERATED = {"build", ".git", "autom4te.cache", "m4",
             "configure", "Makefile.in", "aclocal.m4", "popvault-config.h.in",
             "__pycache__"}


def _walk_sources():
    names = []
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in GENERATED
                   and not (dirpath == ROOT and d.startswith("build")
                            and d != "build-aux")]
        for fn in files:
            if os.path.basename(dirpath) == "build-aux" and \
                    not fn.endswith(".in"):
                continue
            if fn not in GENERATED and not fn.endswith(".pyc"):
                names.append(os.path.relpath(os.path.join(dirpath, fn), ROOT))
    return names


def _build(tmp):
    src = os.path.join(tmp, "src")
    _export(src)
    assert not os.path.exists(os.path.join(src, "build"))
    env = dict(os.environ, DEB_BUILD_OPTIONS="parallel=2 nocheck noddebs")
    p = subprocess.run(["nice", "dpkg-buildpackage", "-us", "-uc", "-b"],
                       cwd=src, env=env, capture_output=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr).decode(
        errors="replace")[-4000:]
    with open("/usr/share/dovecot/dovecot-abi") as f:
        abi = f.read().strip()
    debs = glob.glob(os.path.join(tmp, "dovecot-popvault_*_amd64.deb"))
    assert len(debs) == 1, os.listdir(tmp)
    return debs[0], abi


def test_deb_builds_installs_and_applies_a_policy():
    tmp = tempfile.mkdtemp(prefix="popvault-deb-")
    try:
        deb, abi = _build(tmp)

        info = subprocess.run(["dpkg-deb", "-f", deb, "Package", "Depends"],
                              check=True, capture_output=True, text=True)
        assert "Package: dovecot-popvault" in info.stdout, info.stdout
        depends = [d.strip() for d in info.stdout.split("Depends:", 1)[1]
                   .split(",")]
        assert "dovecot-abi-%s" % abi in depends, depends
        # the ABI of the Dovecot under test (2.3 on Debian 12, 2.4 on 13),
        # and the description names that Dovecot
        series = "%d.%d" % DOVECOT_VERSION
        assert abi.startswith(series + "."), (abi, series)
        description = subprocess.run(["dpkg-deb", "-f", deb, "Description"],
                                     check=True, capture_output=True,
                                     text=True).stdout
        assert "built for Dovecot %s\n" % series in description, description
        assert "Dovecot 2.3 plugin" not in description, description
        assert any(d.startswith("libsodium") for d in depends), depends

        listing = subprocess.run(["dpkg-deb", "-c", deb], check=True,
                                 capture_output=True, text=True).stdout
        files = {l.split()[-1].lstrip("./") for l in listing.splitlines()}
        for f in (MODULEDIR + "/lib20_popvault_plugin.so",
                  MODULEDIR + "/login/lib20_popvault_login_plugin.so",
                  DOCDIR + "/examples/90-popvault.conf",
                  DOCDIR + "/examples/91-popvault-metrics.conf",
                  DOCDIR + "/settings.md", DOCDIR + "/events.md",
                  DOCDIR + "/COPYING", DOCDIR + "/copyright"):
            # dh_compress gzips documents over 4 KiB
            assert f in files or (f.endswith(".md") and f + ".gz" in files), \
                (f, listing)
        # installed, not enabled: nothing lands in /etc/dovecot
        assert not [f for f in files if f.startswith("etc/")], listing
        assert not [f for f in files if f.endswith(".la")], listing

        root = os.path.join(tmp, "root")
        subprocess.run(["dpkg", "-x", deb, root], check=True)
        os.chmod(tmp, 0o755)
        moddir = os.path.join(root, MODULEDIR)
        # the licence: MIT, in COPYING and in the DEP-5 copyright file
        for name in ("COPYING", "copyright"):
            with open(os.path.join(root, DOCDIR, name)) as f:
                text = " ".join(f.read().split())
            assert "Permission is hereby granted, free of charge" in text, name
        with open(os.path.join(root, DOCDIR, "copyright")) as f:
            assert "\nLicense: MIT\n" in f.read()
        # the example configuration ships disabled
        with open(os.path.join(root, DOCDIR, "examples",
                               "90-popvault.conf")) as f:
            assert "\n#mail_plugins = $mail_plugins popvault" in f.read()

        users = [User("deb", fields={"popvault_after_retr": "delete"})]
        with dovecot(users, module_dir=moddir,
                     login_env={"POPVAULT_LOGIN_EXPIRE": "0:USER"}) as dc:
            linked = os.path.realpath(os.path.join(
                dc.tmp, "modules", "lib20_popvault_plugin.so"))
            assert linked.startswith(os.path.realpath(root)), linked
            deliver_numbered(dc, "deb", 2)
            assert pop3_session(dc, "deb", retr=[1]).startswith("+OK")
            p = dc.pop3("deb")
            assert p.stat()[0] == 1, "after_retr=delete did not apply"
            p.quit()
            dc.wait_log(r"pop3\(deb\).*popvault: policy: .*action=delete "
                        r"reason=after_retr")
            # the login plugin from the package answers CAPA before login
            p = dc.pop3()
            r, lines = p.multi("CAPA")
            p.close()
            assert "EXPIRE 0 USER" in lines, lines
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Crash points as regression tests (issue 17): a command killed exactly
at each of its mutating system calls (strace, crash_util.py), from the
same starting state, keeps its promise. The full enumeration over every
operation is tests/crash/crashpoints.py (docs/fault-injection.md)."""

import os
import tempfile
import shutil

import crash_util as cl
import harness
from harness import User, make_message
from crypt_util import (MAGIC, all_files, crypt_dovecot, enc_fields,
                        message_files)

PW = "Crash-recovery-pw-1"
KEY_PW = {"userdb_popvault_key_password": "%w"}


def _recovery(dc, user):
    rc, out, err = dc.doveadm("-f", "tab", "popvault", "key", "recovery",
                              "-u", user, "-p", PW)
    return cl.RECOVERY_RX.search(out).group(0)


def _killed_runs(dc, args, crash_dir, min_points, user="alice",
                 choose=list, run=None):
    """Records doveadm ARGS (or RUN(trace, point) -> (rc, stdout)) once
    from USER's present state, then yields (point, stdout) after each
    run killed exactly at one of its mutating calls (those CHOOSE picks
    from all), every run starting from that same state."""
    if run is None:
        def run(trace, point):
            rc, out, err = cl.doveadm_traced(dc, args, trace, point)
            assert point is not None or rc == 0, err
            return rc, out
    snap = os.path.join(crash_dir, "snap")
    cl.snapshot(dc, [user], snap)
    scope = [os.path.join(dc.tmp, "home") + "/"]
    trace = os.path.join(crash_dir, "record.trace")
    run(trace, None)
    points = choose(cl.parse_trace(trace, scope))
    assert len(points) >= min_points, points
    for i, point in enumerate(points):
        cl.restore(dc, [user], snap)
        trace = os.path.join(crash_dir, "k%d.trace" % i)
        rc, out = run(trace, point)
        assert rc == -9 and cl.killed_call(trace, scope), (point, rc)
        yield point, out


def _pop3_login_run(dc, crash_dir, user, env=None):
    """A run for _killed_runs(): one POP3 login and QUIT of USER, its
    pop3 process under strace (dc needs cl.service_conf(crash_dir))."""
    def run(trace, point):
        cl.arm(crash_dir, "pop3", trace, point, env)
        try:
            cl.pop3(dc, user).quit()
        except (EOFError, OSError, AssertionError):
            pass
        finally:
            cl.disarm(crash_dir, "pop3")
        assert cl.wait_trace_end(trace)
        return (-9 if point is not None and cl.killed_call(trace, [
            os.path.join(dc.tmp, "home") + "/"]) else 0), ""
    return run


def test_key_recovery_killed_keeps_the_held_recovery_key():
    """Killed anywhere before it has printed the new recovery key, `key
    recovery` leaves every private key sealed to the recovery key the
    admin already holds; killed after, to the one it printed; a re-run
    finishes and its key opens every private key."""
    alice = User("alice", PW, {"popvault_encrypt": "yes"},
                 passdb_fields=KEY_PW)
    crash_dir = tempfile.mkdtemp(prefix="popvault-crash-")
    try:
        with crypt_dovecot([alice], debug=False) as dc:
            cl.pop3(dc, "alice").quit()          # the first key pair
            dc.deliver("alice", make_message("one"))
            held = _recovery(dc, "alice")
            # a second key pair, so a kill can fall between two files
            dc.doveadm("popvault", "key", "rotate", "-u", "alice", "-p", PW)
            keys = os.path.join(dc.home("alice"), ".popvault", "keys")
            assert cl.recovery_opens(keys, held) == []
            args = ["-f", "tab", "popvault", "key", "recovery", "-u",
                    "alice", "-p", PW]
            failures = []
            # two key files and the recovery file, each written to a
            # temporary file, fsynced and renamed, twice for the keys
            for point, out in _killed_runs(dc, args, crash_dir, 12):
                shown = cl.RECOVERY_RX.findall(out)
                ok = [r for r in [held] + shown
                      if cl.recovery_opens(keys, r) == []]
                if not ok or (not shown and ok != [held]):
                    failures.append("%s: the held recovery key opens "
                                    "not %s" % (point, cl.recovery_opens(
                                        keys, held)))
                    continue
                # the next run finishes; its key opens everything
                new = _recovery(dc, "alice")
                if cl.recovery_opens(keys, new):
                    failures.append("%s: re-run's key opens not %s" % (
                        point, cl.recovery_opens(keys, new)))
            assert not failures, "\n".join(failures)
            # and the mail still reads with the password
            p = cl.pop3(dc, "alice")
            assert p.stat()[0] == 1
            p.quit()
    finally:
        shutil.rmtree(crash_dir, ignore_errors=True)


def test_key_password_killed_reads_with_old_or_new_password():
    """Killed at any of its crash points, `key password` leaves the
    mail readable with the old password or with the new one (never
    neither: keys split between the two), and a re-run finishes."""
    alice = User("alice", PW, {"popvault_encrypt": "yes"},
                 passdb_fields=KEY_PW)
    new_pw = "Crash-recovery-pw-2"
    crash_dir = tempfile.mkdtemp(prefix="popvault-crash-")
    try:
        with crypt_dovecot([alice], debug=False) as dc:
            cl.pop3(dc, "alice").quit()
            dc.deliver("alice", make_message("one"))
            # two key pairs: a kill can fall between their files
            dc.doveadm("popvault", "key", "rotate", "-u", "alice", "-p", PW)
            dc.deliver("alice", make_message("two"))
            args = ["popvault", "key", "password", "-u", "alice",
                    "-o", PW, "-n", new_pw]

            def reads(pw):
                inv = cl.doveadm_inventory(
                    dc, "alice", ("-o", "plugin/popvault_key_password=" +
                                  pw))
                return inv is not None and len(inv) == 2

            failures = []
            for point, _ in _killed_runs(dc, args, crash_dir, 8):
                if not reads(PW) and not reads(new_pw):
                    failures.append("%s: reads with neither" % point)
                    continue
                dc.doveadm(*args)
                if not reads(new_pw):
                    failures.append("%s: re-run did not finish" % point)
            assert not failures, "\n".join(failures)
    finally:
        shutil.rmtree(crash_dir, ignore_errors=True)


def _mdbox_append_headers(points):
    """Where mdbox finishes appending a message to an m.* file: the
    pwrite of its dbox header (the message size, written last, over a
    zeroed one), the last write into the file before its fdatasync."""
    out, last = [], None
    for p in points:
        if "/storage/m." not in p.desc:
            continue
        if p.syscall == "pwrite64":
            last = p
        elif p.syscall == "fdatasync" and last is not None:
            out.append(last)
            last = None
    return out


def _crypt_mdbox_killed_in_append(op):
    """`op` (encrypt/decrypt) on mdbox killed as it writes the dbox
    header of a copy: the storage rebuild the re-run starts with salvages
    the half-written copy as a message of its own (the zeroed header
    becomes part of its body). After the re-run every message is there
    exactly once, byte-exact, in the target form, with its UIDL."""
    encrypt = op == "encrypt"
    u = User("u", "pw", enc_fields(popvault_encrypt="no" if encrypt
                                   else "yes"))
    args = ["-o", "plugin/popvault_encrypt=" + ("yes" if encrypt else "no"),
            "popvault", op, "-u", "u"]
    crash_dir = tempfile.mkdtemp(prefix="popvault-crash-")
    try:
        with crypt_dovecot([u], mail_format="mdbox", debug=False,
                           extra_conf="dotlock_use_excl = no\n") as dc:
            dc.deliver_many("u", [
                make_message("m%d" % i, msgid="<m%d@crash.test>" % i,
                             body="line %d\r\n" % i * n)
                for i, n in enumerate((20, 400, 9000))])
            before = cl.imap_inventory(dc, "u")
            uidls = cl.pop3_view(dc, "u")
            assert len(before) == 3 and len(uidls) == 3
            failures = []
            for point, _ in _killed_runs(dc, args, crash_dir, 3, user="u",
                                         choose=_mdbox_append_headers):
                # the first run after a killed one repairs the storage
                # and asks for one more (exit 75, docs/encryption.md)
                rc, out, err = dc.doveadm(*args, check=False)
                if rc == 75:
                    rc, out, err = dc.doveadm(*args, check=False)
                after = cl.imap_inventory(dc, "u")
                if rc != 0 or after != before or \
                        cl.pop3_view(dc, "u") != uidls:
                    failures.append("%s: rc %d, %s" % (
                        point, rc, {k: len(v) for k, v in after.items()}))
                # encrypt: no plaintext body anywhere in the home (the
                # repair's m.*.broken copies included); decrypt: every
                # stored message in plaintext
                for path in (all_files(dc.home("u")) if encrypt else
                             message_files(dc, "u")):
                    with open(path, "rb") as f:
                        data = f.read()
                    if (b"line 2\r\nline 2" in data) if encrypt else \
                            MAGIC in data:
                        failures.append("%s: %s holds %s" % (
                            point, path, "plaintext" if encrypt else
                            "ciphertext"))
            assert not failures, "\n".join(failures)
    finally:
        shutil.rmtree(crash_dir, ignore_errors=True)


def test_encrypt_mdbox_killed_in_an_append_leaves_one_copy():
    _crypt_mdbox_killed_in_append("encrypt")


def test_decrypt_mdbox_killed_in_an_append_leaves_one_copy():
    _crypt_mdbox_killed_in_append("decrypt")


def _dict_write_points(points):
    """The crash points of the file dict's write: from its first call on
    popvault.dict* to the rename onto popvault.dict, the temporary and
    lock files in between included."""
    touch = [i for i, p in enumerate(points) if "popvault.dict" in p.desc]
    return points[touch[0]:touch[-1] + 1] if touch else []


def test_login_delay_killed_in_the_dict_update_lets_the_next_login_in():
    """A POP3 login with LOGIN-DELAY (refuse) records its time in the
    default file dict. Killed at any step of that write, the dict holds
    the old time or the new one, and the next login is answered at once
    as that time says (let in after the old one, refused after the new
    one). With the file dict's default dotlock, a kill after the lock was
    made left it without a PID, and the next login hung in the dict
    write for the lock's stale timeout."""
    u = User("u", "pw", {"popvault_login_delay": "600s",
                         "popvault_login_delay_mode": "refuse"})
    crash_dir = tempfile.mkdtemp(prefix="popvault-crash-")
    os.chmod(crash_dir, 0o755)
    try:
        with harness.dovecot([u], debug=False,
                             extra_conf=cl.service_conf(crash_dir)) as dc:
            dc.deliver("u", make_message("one"))
            # the last full login an hour ago (libfaketime)
            _pop3_login_run(dc, crash_dir, "u", cl.faketime_env("-1h"))(
                os.path.join(crash_dir, "old.trace"), None)
            old = cl.last_login(dc, "u")
            assert old is not None
            failures = []
            for point, _ in _killed_runs(
                    dc, None, crash_dir, 2, user="u",
                    choose=_dict_write_points,
                    run=_pop3_login_run(dc, crash_dir, "u")):
                try:
                    value = cl.last_login(dc, "u")
                    reply, count, took = cl.pop3_login(dc, "u")
                except Exception as e:  # noqa: BLE001 - each a finding
                    failures.append("%s: %s" % (point, e))
                    continue
                refused = reply.startswith("-ERR [LOGIN-DELAY]")
                if value != old and not (value.isdigit() and
                                         int(value) > int(old) + 1800):
                    failures.append("%s: last login %r" % (point, value))
                elif took > cl.SESSION_TIMEOUT or \
                        refused != (value != old) or \
                        (not refused and count != 1):
                    failures.append("%s: last login %s, next login %s "
                                    "(%s messages) after %.1f s" % (
                                        point, value, reply.strip(),
                                        count, took))
            assert not failures, "\n".join(failures)
    finally:
        shutil.rmtree(crash_dir, ignore_errors=True)

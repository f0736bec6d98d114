#!/usr/bin/env python3
"""Crash-point enumeration (issue 17, docs/fault-injection.md): every
operation that changes mail, keys or state, killed once at each of its
mutating system calls, from the same starting state; then the user's
next session, the next normal run of the operation and the invariants.

  tests/crash/crashpoints.py --build-dir build [--ci] [-j N] [-k NAME]
                             [--list] [--excl-dotlocks]

--ci runs every crash point of the key commands and, of every other
operation, CI_POINTS spread evenly over its life (its first, its last,
and between). Prints per operation the crash points, the violations
and the time; exits 1 on any violation."""

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import crash_util as cl  # noqa: E402
import harness  # noqa: E402
from harness import User, make_message  # noqa: E402
from crypt_util import crypt_dovecot, enc_fields  # noqa: E402

PW_A, PW_B = "crash-pw-old", "crash-pw-new"
KEY_PW = {"userdb_popvault_key_password": "%w"}


def msgs(prefix, sizes):
    return [make_message("%s%d" % (prefix, i),
                         msgid="<%s%d@crash.test>" % (prefix, i),
                         body=("%s %d line\r\n" % (prefix, i)) * (n // 12 + 1))
            for i, n in enumerate(sizes)]


class Env:
    """One Dovecot with wrapped pop3/lmtp and the operation's users."""

    def __init__(self, dc, crash_dir, users):
        self.dc, self.crash_dir, self.users = dc, crash_dir, users
        self.snap = os.path.join(crash_dir, "snapshot")
        self.n = 0

    def trace_path(self):
        self.n += 1
        return os.path.join(self.crash_dir, "t%d.trace" % self.n)

    @property
    def scope(self):
        s = [os.path.join(self.dc.tmp, "home") + "/"]
        if getattr(self.dc, "mail_temp_dir", None):
            s.append(self.dc.mail_temp_dir + "/")
        return s


class Run:
    def __init__(self, rc=0, out="", err="", trace=None, killed=None):
        self.rc, self.out, self.err = rc, out, err
        self.trace, self.killed = trace, killed


# --- operations -----------------------------------------------------------

class Op:
    """An operation: a starting state, one run (optionally killed at a
    crash point), and what counts as finished."""
    fmt = "maildir"
    # a copy next to its original until the re-run, by design
    interim_copies = False
    crypt = False
    key_command = False
    # run by --ci (at the points select() picks)
    in_ci = True
    user = "u"
    fields = {}
    passdb_fields = {}
    password = None
    extra_conf = ""

    def users(self):
        return [User(self.user, self.password, dict(self.fields),
                     dict(self.passdb_fields))]

    def prepare(self, env):
        pass

    def run(self, env, point):
        raise NotImplementedError

    def rerun_ok(self, run):
        return run.rc == 0

    # what the invariant checks read with
    def inventory(self, env):
        return cl.imap_inventory(env.dc, self.user)

    def pop3_view(self, env):
        return cl.pop3_view(env.dc, self.user)

    def may_vanish(self, env):
        return set()

    def check(self, env, phase):
        """Violations of the operation's own invariants, after the kill
        (phase "crash") and after the re-run ("rerun")."""
        return []


class Doveadm(Op):
    args = ()
    input = None
    env = None

    def run(self, env, point):
        trace = env.trace_path()
        rc, out, err = cl.doveadm_traced(
            env.dc, ["-f", "tab"] + list(self.args) + ["-u", self.user],
            trace, point, input=self.input, env=self.env)
        return Run(rc, out, err, trace)


class Pop3Session(Op):
    """RETR and DELE of given messages (by UIDL, so a re-run means the
    same ones), then QUIT; the pop3 process is the one killed."""
    retr = (0, 2, 3)
    dele = (1, 2)
    env = None
    sizes = (300, 5000, 90000, 800, 20000, 1200)

    def prepare(self, env):
        env.dc.deliver_many(self.user, msgs("m", self.sizes))
        # the UIDLs to act on, in the starting state
        p = cl.pop3(env.dc, self.user)
        uidls = [u for _, u in p.uidl()]
        p.quit()
        self.retr_u = [uidls[i] for i in self.retr]
        self.dele_u = [uidls[i] for i in self.dele]

    def session(self, c):
        listed = {u: n for n, u in c.uidl()}
        for u in self.retr_u:
            if u in listed:
                c.multi("RETR %s" % listed[u])
        for u in self.dele_u:
            if u in listed:
                c.command("DELE %s" % listed[u])
        c.quit()

    def run(self, env, point):
        trace = env.trace_path()
        cl.arm(env.crash_dir, "pop3", trace, point, self.env)
        c = None
        try:
            c = cl.pop3(env.dc, self.user)
            self.session(c)
        except (EOFError, OSError, AssertionError):
            pass
        finally:
            if c:
                c.close()
            cl.disarm(env.crash_dir, "pop3")
        ended = cl.wait_trace_end(trace)
        return Run(0 if ended else 1, trace=trace)


class Lmtp(Op):
    """One LMTP delivery; its re-run is the next delivery."""
    sizes = (2000,)

    def prepare(self, env):
        env.dc.deliver_many(self.user, msgs("old", (400, 3000)))
        self.count = 0

    def run(self, env, point):
        trace = env.trace_path()
        self.count += 1
        # the driver alternates: a run (recorded or killed) delivers A,
        # the re-run after it B
        if not hasattr(self, "ab"):
            # made once: the Date header is part of the bytes compared
            self.ab = msgs("A", self.sizes) + msgs("B", self.sizes)
        msg = self.ab[0 if self.count % 2 else 1]
        cl.arm(env.crash_dir, "lmtp", trace, point)
        reply = ""
        try:
            reply = cl.lmtp_deliver(env.dc, self.user, msg)
        except (EOFError, OSError, AssertionError):
            pass
        finally:
            cl.disarm(env.crash_dir, "lmtp")
        cl.wait_trace_end(trace)
        return Run(0 if reply.startswith("250") else 1, reply, "", trace)

    def may_vanish(self, env):
        # killed before its 250, a message may be there whole or not at
        # all (the MTA sends it again)
        return {"<A0@crash.test>"}


# -- keys --

class KeyOp(Doveadm):
    """A password-mode user with two key pairs (one rotation), mail
    under both, and a recovery key the admin holds."""
    crypt = True
    key_command = True
    user = "alice"
    password = PW_A
    fields = {"popvault_encrypt": "yes"}
    passdb_fields = KEY_PW
    old_password, new_password = PW_A, PW_A

    def prepare(self, env):
        dc = env.dc
        cl.pop3(dc, self.user).quit()      # first login: the key pair
        dc.deliver_many(self.user, msgs("k", (500, 3 * 65536 + 7)))
        _, out, _ = dc.doveadm("-f", "tab", "popvault", "key", "recovery",
                               "-u", self.user, "-p", PW_A)
        env.recovery = cl.RECOVERY_RX.search(out).group(0)
        dc.doveadm("popvault", "key", "rotate", "-u", self.user, "-p", PW_A)
        dc.deliver_many(self.user, msgs("r", (700,)))
        self.args = self.command(env)

    def inventory(self, env):
        # the mail reads with the old password or, once the command got
        # that far, the new one (a login would need the passdb changed)
        for pw in dict.fromkeys((self.old_password, self.new_password)):
            inv = cl.doveadm_inventory(
                env.dc, self.user,
                ("-o", "plugin/popvault_key_password=" + pw))
            if inv is not None:
                env.read_with = pw
                return inv
        raise AssertionError("the mail reads with neither password")

    def pop3_view(self, env):
        if env.read_with != self.password:
            # the passdb would have to change too: nothing to log in with
            return None
        return cl.pop3_view(env.dc, self.user)


class KeyRecovery(KeyOp):
    name = "key recovery"

    def command(self, env):
        return ("popvault", "key", "recovery", "-p", PW_A)


class KeyRotate(KeyOp):
    name = "key rotate"

    def command(self, env):
        return ("popvault", "key", "rotate", "-p", PW_A)


class KeyPasswordOld(KeyOp):
    name = "key password -o"
    new_password = PW_B

    def command(self, env):
        return ("popvault", "key", "password", "-o", PW_A, "-n", PW_B)


class KeyPasswordRecovery(KeyOp):
    name = "key password -r"
    new_password = PW_B

    def command(self, env):
        return ("popvault", "key", "password", "-r", env.recovery,
                "-n", PW_B)


class KeyGenerate(KeyOp):
    """generate for a user with a master key and no key pair yet."""
    name = "key generate"
    user = "gen"
    password = None
    passdb_fields = {}
    fields = enc_fields()

    def prepare(self, env):
        env.recovery = None
        self.args = ("popvault", "key", "generate")

    def inventory(self, env):
        env.read_with = None
        return cl.imap_inventory(env.dc, self.user)

    def pop3_view(self, env):
        return cl.pop3_view(env.dc, self.user)

    def rerun_ok(self, run):
        # killed after the key pair became current, the re-run says so
        return run.rc == 0 or "has a key pair already" in run.err


class KeyFirstLogin(Pop3Session):
    """The key pair created at the first login in password mode."""
    name = "key creation at first login"
    crypt = True
    user = "alice"
    password = PW_A
    fields = {"popvault_encrypt": "yes"}
    passdb_fields = KEY_PW
    retr = dele = ()

    def prepare(self, env):
        env.recovery = None
        self.retr_u = self.dele_u = []

    def inventory(self, env):
        env.read_with = PW_A
        return cl.imap_inventory(env.dc, self.user)


class KeyFirstDelivery(Lmtp):
    name = "key creation at first delivery"
    crypt = True
    user = "m"
    fields = enc_fields()

    def prepare(self, env):
        env.recovery = None
        self.count = 0


# -- mail --

class LmtpPlain(Lmtp):
    name = "lmtp plaintext small"


class LmtpEncSmall(Lmtp):
    """Each encrypted delivery also appends the message's entry for the
    first IMAP open to dovecot.popvault.delivered (creating it by
    link() the first time): killed anywhere in that too, the message
    is there whole or not at all."""
    name = "lmtp encrypted small"
    crypt = True
    fields = enc_fields()


class LmtpEncChunks(Lmtp):
    name = "lmtp encrypted multi-chunk"
    crypt = True
    fields = enc_fields()
    sizes = (3 * 65536 + 100,)



POLICIES = {
    "move": {"popvault_after_retr": "move:Archive",
             "popvault_on_dele": "move:Trash"},
    "hide": {"popvault_after_retr": "hide", "popvault_on_dele": "hide"},
    "delete": {"popvault_after_retr": "delete",
               "popvault_on_dele": "expunge"},
    "keep": {"popvault_after_retr": "keep", "popvault_on_dele": "keep"},
}


def pop3_ops():
    out = []
    for pol, fields in POLICIES.items():
        out.append(type("Pop3_" + pol, (Pop3Session,), {
            "name": "pop3 QUIT %s/%s" % (fields["popvault_after_retr"],
                                         fields["popvault_on_dele"]),
            "fields": fields}))
    return out


class PostSessionSweep(Pop3Session):
    """The retention sweep a POP3 session runs after the client left:
    never-downloaded mail two days old moves to Expired."""
    name = "post-session sweep"
    fields = {"popvault_retain_unread": "1d",
              "popvault_expire_action": "move:Expired"}
    retr = dele = ()
    env = cl.faketime_env("+2d")


class DoveadmSweep(Doveadm):
    name = "doveadm popvault sweep"
    fields = PostSessionSweep.fields
    args = ("popvault", "sweep")
    env = cl.faketime_env("+2d")

    def prepare(self, env):
        env.dc.deliver_many(self.user, msgs("s", (300, 4000, 900, 70000)))


class MoveRecovery(Pop3Session):
    """The next session after a move cut short (the copy is in Archive,
    the original still in INBOX with $PopvaultMoving): the recovery in
    that session is what gets killed."""
    name = "move recovery"
    fields = POLICIES["move"]
    retr = dele = ()

    def prepare(self, env):
        super().prepare(env)
        # cut a real move short: kill pop3 at the last link() or
        # rename() of the QUIT that moves the first and third message
        c = cl.pop3(env.dc, self.user)
        uidls = [u for _, u in c.uidl()]
        c.quit()
        p = Pop3Session()
        p.user, p.retr_u, p.dele_u = self.user, uidls[0:3:2], []
        trace = env.trace_path()
        cl.arm(env.crash_dir, "pop3", trace)
        c = cl.pop3(env.dc, self.user)
        p.session(c)
        cl.wait_trace_end(trace)
        link = [pt for pt in cl.parse_trace(trace, env.scope)
                if pt.syscall in ("link", "linkat", "rename")]
        assert link, "no move seen"
        Pop3Session.run(p, env, link[-1])
        self.retr_u = self.dele_u = []


class Crypt(Doveadm):
    crypt = True
    interim_copies = True
    sizes = (300, 4000, 70000, 900)

    def prepare(self, env):
        dc = env.dc
        if self.op == "encrypt":
            dc.deliver_many(self.user, msgs("c", self.sizes))
        else:
            dc.deliver_many(self.user, msgs("c", self.sizes))
        self.args = ("popvault", self.op) if self.op == "encrypt" else (
            "-o", "plugin/popvault_encrypt=no", "popvault", self.op)

    def rerun_ok(self, run):
        # mdbox: the first run after a cut-short one repairs the storage
        # and asks for one more (exit 75, docs/encryption.md)
        return run.rc in (0, 75)


def crypt_ops():
    out = []
    for fmt in ("maildir", "sdbox", "mdbox"):
        out.append(type("Encrypt_" + fmt, (Crypt,), {
            "name": "encrypt " + fmt, "fmt": fmt, "op": "encrypt",
            # plaintext mail, then encryption turned on for the tool
            "fields": enc_fields(popvault_encrypt="no"),
            "args_prefix": ()}))
        out.append(type("Decrypt_" + fmt, (Crypt,), {
            "name": "decrypt " + fmt, "fmt": fmt, "op": "decrypt",
            "fields": enc_fields()}))
    return out


class UidlImport(Doveadm):
    name = "uidl import"
    fields = {"popvault_uidl_ledger": "yes"}

    def prepare(self, env):
        env.dc.deliver_many(self.user, msgs("i", (300, 400, 500, 600)))
        path = os.path.join(env.crash_dir, "import.txt")
        with open(path, "w") as f:
            for i in range(4):
                f.write("OLD-%d <i%d@crash.test>\n" % (i, i))
        self.args = ("popvault", "uidl", "import", path)


class LoginDelay(Pop3Session):
    """The LOGIN-DELAY dict update: a full POP3 login records its time in
    popvault_dict (by default the file dict popvault.dict in the home);
    the last full login was an hour ago, so this one is let in and
    records. Killed anywhere, the dict holds the old time or the new one,
    never something that fails the next login or lets it in too early,
    and the next login (within 10 s) gets what that time says: a full
    maildrop after the old one; after the new one refused (refuse) or an
    empty maildrop (empty)."""
    retr = dele = ()
    mode = "refuse"

    @property
    def fields(self):
        return {"popvault_login_delay": "600s",
                "popvault_login_delay_mode": self.mode}

    def prepare(self, env):
        env.dc.deliver_many(self.user, msgs("d", (300, 2000)))
        # the last full login an hour ago (libfaketime), so the run's
        # login is a full one and records its time
        trace = env.trace_path()
        cl.arm(env.crash_dir, "pop3", trace, None, cl.faketime_env("-1h"))
        try:
            cl.pop3(env.dc, self.user).quit()
        finally:
            cl.disarm(env.crash_dir, "pop3")
        cl.wait_trace_end(trace)
        self.old = cl.last_login(env.dc, self.user)
        assert self.old is not None, "no login time recorded"
        self.retr_u = self.dele_u = []

    def pop3_view(self, env):
        # a login inside the delay: check() looks at what POP3 says
        return None

    def ci_select(self, points):
        """CI: the dict write (from its first call on popvault.dict* to
        the rename onto it: where a kill once left a lock that held the
        next login) and the reply."""
        touch = [i for i, p in enumerate(points)
                 if "popvault.dict" in p.desc]
        if not touch:
            return None
        return points[touch[0]:touch[-1] + 1] + points[-1:]

    def check(self, env, phase):
        try:
            value = cl.last_login(env.dc, self.user)
        except (ValueError, OSError) as e:
            return [("dict", "%s: %s" % (phase, e))]
        if value == self.old:
            recorded = False
        elif value is not None and value.isdigit() and \
                int(self.old) + 1800 < int(value) <= time.time():
            recorded = True
        else:
            return [("dict", "%s: last-login %r, neither the old %s nor "
                     "a new time" % (phase, value, self.old))]
        if phase == "rerun" and not recorded:
            return [("rerun", "the re-run recorded no login")]
        try:
            reply, count, took = cl.pop3_login(env.dc, self.user)
        except (EOFError, OSError, AssertionError) as e:
            return [("session", "%s: next POP3 login: %s" % (phase, e))]
        out = []
        if took > cl.SESSION_TIMEOUT:
            out.append(("session", "%s: next login took %.1f s" % (
                phase, took)))
        if not recorded:
            want = "a full login"
            ok = count == 2
        elif self.mode == "refuse":
            want = "-ERR [LOGIN-DELAY]"
            ok = reply.startswith("-ERR [LOGIN-DELAY]")
        else:
            want = "an empty maildrop"
            ok = count == 0
        if not ok:
            out.append(("login-delay", "%s: last login %s, next login: "
                        "%s (%s messages), expected %s" % (
                            phase, value, reply.strip(), count, want)))
        return out


class LoginDelayRefuse(LoginDelay):
    name = "LOGIN-DELAY dict update (refuse)"


class LoginDelayEmpty(LoginDelay):
    name = "LOGIN-DELAY dict update (empty)"
    mode = "empty"
    # the same dict write as refuse's: CI cuts it there
    in_ci = False


def all_ops():
    ops = [KeyRecovery, KeyRotate, KeyPasswordOld, KeyPasswordRecovery,
           KeyGenerate, KeyFirstLogin, KeyFirstDelivery,
           LmtpPlain, LmtpEncSmall, LmtpEncChunks]
    ops += pop3_ops()
    ops += [PostSessionSweep, DoveadmSweep, MoveRecovery]
    ops += crypt_ops()
    ops += [UidlImport, LoginDelayRefuse, LoginDelayEmpty]
    return ops


# Found and not fixed yet (docs/fault-injection.md): printed and counted,
# but they don't fail the run. None at present.
KNOWN = {}


# --- the driver -----------------------------------------------------------

def fix_encrypt_fields(op, env):
    """encrypt: plaintext was delivered with encryption off; the tool
    runs with it on (-o beats the userdb field)."""
    if getattr(op, "op", None) == "encrypt":
        op.args = ("-o", "plugin/popvault_encrypt=yes", "popvault",
                   "encrypt")


class Checker:
    def __init__(self, op, env):
        self.op, self.env = op, env
        self.dc = env.dc

    def state(self):
        """(inventory, POP3 view), each taken by the user's next
        session; raises when a session fails or is slow."""
        t0 = time.time()
        if self.op.key_command:
            # which password reads decides how POP3 can log in
            inv = self.op.inventory(self.env)
            view = self.op.pop3_view(self.env)
        else:
            view = self.op.pop3_view(self.env)
            inv = self.op.inventory(self.env)
        took = time.time() - t0
        return inv, view, took

    def keys_ok(self, shown):
        """Violations of the key invariants: the recovery key the admin
        holds (or the one just shown) opens every private key."""
        held = [r for r in shown if r]
        if not held:
            return []
        kd = os.path.join(self.dc.home(self.op.user), ".popvault", "keys")
        if any(not cl.recovery_opens(kd, r) for r in held):
            return []
        return [("recovery", "no recovery key the admin was shown (%s) "
                 "opens every private key: %s" % (
                     ", ".join(r[:14] for r in held),
                     cl.recovery_opens(kd, held[-1])))]


# A writer killed between creating a dotlock with O_EXCL and writing its
# PID into it leaves an empty lock that Dovecot can only take over after
# its stale timeout (dovecot-uidlist.lock: 2 min; the index logs'
# .newlock: the same): the next session hangs. Created by link() of a
# file that already holds the PID (dotlock_use_excl = no), a lock is
# never empty, and a dead owner's lock is taken over at once. The
# recommended setting (docs/admin-guide.md); --excl-dotlocks runs with
# Dovecot's default to show the difference.
DOTLOCK_CONF = "dotlock_use_excl = no\n"


def run_op(op_cls, only_ci, list_only, log, excl_dotlocks=False):
    op = op_cls()
    crash_dir = tempfile.mkdtemp(prefix="popvault-crash-")
    os.chmod(crash_dir, 0o755)
    users = op.users()
    extra = cl.service_conf(crash_dir) + op.extra_conf + (
        "" if excl_dotlocks else DOTLOCK_CONF)
    maker = crypt_dovecot if op.crypt else harness.dovecot
    t0 = time.time()
    violations = []
    stats = {"points": 0, "run": 0, "drifted": 0, "not_killed": 0,
             "newlock": 0, "interim": 0}
    try:
        with maker(users, mail_format=op.fmt, extra_conf=extra,
                   debug=False) as dc:
            env = Env(dc, crash_dir, [u.name for u in users])
            env.recovery = None
            env.read_with = op.password
            op.prepare(env)
            fix_encrypt_fields(op, env)
            cl.snapshot(dc, env.users, env.snap)
            chk = Checker(op, env)

            # before: the inventory, from a copy of the starting state
            before, view0, _ = chk.state()
            # the recording run, uninterrupted, and where it ends
            cl.restore(dc, env.users, env.snap)
            rec = op.run(env, None)
            if rec.rc != 0 and not op.rerun_ok(rec):
                raise AssertionError("%s: the uninterrupted run failed: "
                                     "%s %s" % (op.name, rec.out, rec.err))
            points = cl.parse_trace(rec.trace, env.scope)
            shown = [env.recovery] + cl.RECOVERY_RX.findall(rec.out)
            ref_mid, view_mid, _ = chk.state()
            rr = op.run(env, None)
            shown_ref = shown + cl.RECOVERY_RX.findall(rr.out)
            ref_end, view_end, _ = chk.state()
            for kind, what in chk.keys_ok(shown_ref[-1:]):
                violations.append(("reference", kind, what))
            stats["points"] = len(points)
            chosen = select(points, op, only_ci)
            if list_only:
                for p in points:
                    print("    %s%s" % ("* " if p in chosen else "  ", p))
                chosen = []
            vanish = op.may_vanish(env)
            for i, point in enumerate(chosen):
                cl.restore(dc, env.users, env.snap)
                log_at = os.path.getsize(dc.log_path)
                tag = "%s#%d" % (point.syscall, point.k)
                run = op.run(env, point)
                stats["run"] += 1
                killed = cl.killed_call(run.trace, env.scope)
                if killed is None:
                    stats["not_killed"] += 1
                elif killed[1].rsplit(" = ", 1)[0] != \
                        point.desc.rsplit(" = ", 1)[0]:
                    stats["drifted"] += 1
                    log("    drifted %s: killed at %s" % (point, killed[1]))
                got = check_point(chk, op, env, run, before, view0, ref_mid,
                                  view_mid, ref_end, view_end, vanish,
                                  [env.recovery])
                got += [("log", l) for l in cl.log_crashes(dc, log_at)]
                for kind, what in got:
                    if kind in ("newlock", "interim"):
                        stats[kind] += 1
                        log("    %s: %s (documented)" % (tag, what[:200]))
                        continue
                    violations.append((tag, kind, what))
                    log("    %s %s: %s: %s" % (tag, point.desc[:70], kind,
                                               what[:300]))
    finally:
        shutil.rmtree(crash_dir, ignore_errors=True)
    stats["seconds"] = time.time() - t0
    return stats, violations


def check_point(chk, op, env, run, before, view0, ref_mid, view_mid,
                ref_end, view_end, vanish, shown):
    """The invariants after a kill: the next session, the state in the
    middle, the re-run, the state at the end, the keys."""
    out = []
    dc = env.dc
    shown = shown + cl.RECOVERY_RX.findall(run.out)
    locks = cl.stale_locks(dc, env.users)
    newlocks = [l for l in locks if l.endswith(".newlock")]
    if newlocks:
        # Dovecot writes a new index log into its .newlock dotlock and
        # renames it into place; killed in between, the lock no longer
        # holds a PID and only its stale timeout frees it (once per
        # mailbox, when its index is created: docs/fault-injection.md).
        # Counted apart; removed as the timeout would.
        out.append(("newlock", "index log lock left: %s" % [
            os.path.basename(l) for l in newlocks]))
        for l in newlocks:
            os.unlink(l)
        locks = [l for l in locks if l not in newlocks]
    try:
        inv, view, took = chk.state()
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        out.append(("session", "next session failed: %s (locks left: %s)"
                    % (str(e)[:200], [os.path.basename(l)
                                      for l in locks])))
        # go on from what Dovecot's stale-lock timeout would release
        for l in locks:
            os.unlink(l)
        try:
            inv, view, took = chk.state()
        except Exception as e2:  # noqa: BLE001
            out.append(("session", "still failing: %s" % str(e2)[:200]))
            return out
    if took > cl.SESSION_TIMEOUT:
        out.append(("session", "next session took %.1f s" % took))
    before_v = {k: v for k, v in before.items()}
    ref_m = dict(ref_mid)
    for mid in vanish:
        if mid in ref_m and mid not in inv:
            ref_m.pop(mid)
    mid_phase = cl.compare(before_v, inv, ref_m, "crash") + \
        cl.compare_uidls(view0, view, view_mid, "crash", vanish)
    for k, w in mid_phase:
        if op.interim_copies and k in ("duplicated", "uidl"):
            # encrypt/decrypt between a copy and its original's
            # expunge: both are there until the re-run (docs/encryption.md)
            k = "interim"
        out.append((k, "after the kill: " + w))
    out += chk.keys_ok(shown)
    out += op.check(env, "crash")
    # the next normal run of the same operation finishes the job
    rr = op.run(env, None)
    shown = shown + cl.RECOVERY_RX.findall(rr.out)
    if not op.rerun_ok(rr):
        out.append(("rerun", "re-run failed: rc %s %s" % (
            rr.rc, (rr.out + rr.err)[-300:])))
    if rr.rc == 75:
        rr = op.run(env, None)
        shown = shown + cl.RECOVERY_RX.findall(rr.out)
    try:
        inv2, view2, took2 = chk.state()
    except Exception as e:  # noqa: BLE001
        out.append(("session", "session after the re-run failed: %s"
                    % str(e)[:200]))
        return out
    ref_e = dict(ref_end)
    for mid in vanish:
        if mid in ref_e and mid not in inv2:
            ref_e.pop(mid)
    out += [(k, "after the re-run: " + w)
            for k, w in cl.compare(before_v, inv2, ref_e, "rerun")]
    out += cl.compare_uidls(view0, view2, view_end, "rerun", vanish)
    out += op.check(env, "rerun")
    # after a completed re-run only its own (newest) key counts
    newest = shown[-1:] if len(shown) > 1 else shown
    out += chk.keys_ok(newest)
    # LMTP takes mail, the next POP3 session reads it
    probe = make_message("probe", msgid="<probe@crash.test>")
    try:
        r = cl.lmtp_deliver(dc, op.user, probe)
        if not r.startswith("250"):
            out.append(("session", "LMTP after the re-run: %s" % r))
    except Exception as e:  # noqa: BLE001
        out.append(("session", "LMTP after the re-run: %s" % e))
    return out


# crash points of each non-key operation in the CI subset
CI_POINTS = 6


def select(points, op, only_ci):
    """All points, or the CI subset: all of a key command's; those the
    operation's ci_select() names; of every other operation CI_POINTS
    spread evenly over its life, the first and the last (the reply)
    among them, the same ones every run."""
    if not only_ci or op.key_command or len(points) <= CI_POINTS:
        return list(points)
    chosen = getattr(op, "ci_select", lambda p: None)(points)
    if chosen:
        return chosen
    n = len(points) - 1
    return [points[i * n // (CI_POINTS - 1)] for i in range(CI_POINTS)]


def one_op(index, args):
    """Runs all_ops()[index] (classes made by type() don't pickle);
    returns (lines to print, row)."""
    op = all_ops()[index]
    lines = ["== %s (%s)" % (op.name, op.fmt)]
    stats, violations = run_op(op, args.ci, args.list, lines.append,
                               args.excl_dotlocks)
    lines.append("   %d crash points, %d run, %d violations, %d drifted, "
                 "%d not reached, %d index-log .newlock waits, %d interim "
                 "copies, %.1f s" % (
                     stats["points"], stats["run"], len(violations),
                     stats["drifted"], stats["not_killed"],
                     stats["newlock"], stats["interim"], stats["seconds"]))
    if violations and op.name in KNOWN:
        lines.append("   known, not fixed: " + KNOWN[op.name])
    return lines, (op.name, op.fmt, stats, len(violations))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--ci", action="store_true",
                    help="key commands fully, the rest a subset")
    ap.add_argument("-k", action="append", default=[],
                    help="only operations whose name contains this")
    ap.add_argument("--list", action="store_true",
                    help="list the crash points, run none")
    ap.add_argument("-j", type=int, default=1,
                    help="operations run at the same time")
    ap.add_argument("--excl-dotlocks", action="store_true",
                    help="Dovecot's default dotlock_use_excl = yes")
    args = ap.parse_args()
    harness.BUILD_DIR = os.path.abspath(args.build_dir)
    if not os.access(cl.STRACE, os.X_OK):
        print("strace missing (apt-get install strace)")
        return 2
    ops = [i for i, o in enumerate(all_ops())
           if (not args.k or any(k in o.name for k in args.k)) and
           (o.in_ci or not args.ci)]
    start = time.time()
    rows = []
    with concurrent.futures.ProcessPoolExecutor(max(1, args.j)) as pool:
        for lines, row in pool.map(one_op, ops, [args] * len(ops)):
            print("\n".join(lines), flush=True)
            rows.append(row)
    print("\n| operation | storage | crash points | run | violations | "
          ".newlock waits | interim copies | time |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, fmt, st, nv in rows:
        print("| %s | %s | %d | %d | %d | %d | %d | %.0f s |" % (
            name, fmt, st["points"], st["run"], nv, st["newlock"],
            st["interim"], st["seconds"]))
    total_v = sum(r[3] for r in rows if r[0] not in KNOWN)
    print("total: %d crash points run, %d violations, %.0f s" % (
        sum(r[2]["run"] for r in rows), total_v, time.time() - start))
    return 1 if total_v else 0


if __name__ == "__main__":
    sys.exit(main())

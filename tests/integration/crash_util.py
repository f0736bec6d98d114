"""Deterministic crash points (issue 17, tests/crash/crashpoints.py): run an operation once under
strace to list the mutating system calls of the process that matters,
then once per call, killed with SIGKILL exactly when it enters that
call, from the same starting state, and check invariants from an
inventory taken before.

How a kill lands exactly (strace 6.1, docs/fault-injection.md):
`-e inject=SYSCALL:signal=KILL:when=K` delivers SIGKILL when the
traced process enters its K-th call of SYSCALL; the call does not run.
strace keeps that counter per process and per syscall (not per set of
syscalls, and not only over the calls that mutate), so a crash point is
a pair (syscall, K) where K counts every call of that syscall the
process made in the recording run, read-only ones included. The
recording run and the killed run start from the same copy of the mail
home, so they make the same calls; the killed run's strace log names
the call it stopped at, and a crash point whose killed call is not the
recorded one is counted as drifted (and reported).

A mail process (pop3, lmtp) is started by the Dovecot master, not by
us: the service's `executable` is a small wrapper script which, when
armed for one start (a file it renames away), runs the real binary
under `strace -D` (strace as a detached grandchild, so the process
keeps its PID and the master's bookkeeping of it is unchanged)."""

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import harness
from policy_util import list_mailboxes

STRACE = shutil.which("strace") or "/usr/bin/strace"
# every call that can change a file; only those on files under the
# operation's scope (the homes, mail_temp_dir) become crash points
MUTATING = ("open,openat,creat,write,pwrite64,writev,pwritev,pwritev2,"
            "rename,renameat,renameat2,link,linkat,symlink,unlink,unlinkat,"
            "rmdir,fsync,fdatasync,ftruncate,truncate,fallocate,mkdir,"
            "mkdirat")
FD_CALLS = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "fsync",
            "fdatasync", "ftruncate", "fallocate"}
OPEN_CALLS = {"open", "openat", "creat"}
# the next session of the user must answer within this
SESSION_TIMEOUT = 10

LINE_RX = re.compile(r"^(\d+) +(\w+)\((.*)$", re.M)


class CrashPoint:
    def __init__(self, syscall, k, desc):
        self.syscall, self.k, self.desc = syscall, k, desc

    def __repr__(self):
        return "%s#%d %s" % (self.syscall, self.k, self.desc)


def _normalize(name, args, scope):
    """A call's shape without run-specific names: scope prefix, data
    written, numbers and hex (PIDs, random temp names, times, sizes)
    replaced."""
    for s in scope:
        args = args.replace(s, "~")
    args = re.sub(r"\"(?:[^\"\\]|\\.)*\"\.*", lambda m: m.group(0)
                  if name not in FD_CALLS and "/" in m.group(0) else '"…"',
                  args)
    return name + "(" + re.sub(r"[0-9a-f]{6,}|\d+", "#", args)


def _mutating(name, args, scope):
    """The file a call changes, or None (sockets, pipes, the log, files
    outside the scope, read-only opens)."""
    if name in FD_CALLS:
        m = re.match(r"\d+<([^>]*)>", args)
        path = m.group(1) if m else ""
    elif name in OPEN_CALLS:
        if name != "creat" and not re.search(r"O_CREAT|O_TRUNC", args):
            return None
        m = re.search(r"= -?\d+<([^>]*)>\s*$", args)
        if m:
            path = m.group(1)
        else:
            paths = re.findall(r'"([^"]*)"', args)
            path = paths[0] if paths else ""
    else:
        paths = re.findall(r'"(/[^"]*)"|<(/[^>]*)>', args)
        path = " ".join(a or b for a, b in paths)
    if any(s in path for s in scope):
        return path
    return None


def parse_trace(path, scope):
    """Crash points of the first process in a strace -f log: one per
    mutating call on a file in scope, as (syscall, K)."""
    points, counts, first_pid = [], {}, None
    reply = None
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE_RX.match(line)
            if not m:
                continue
            pid, name, args = m.groups()
            if first_pid is None:
                first_pid = pid
            if pid != first_pid or "resumed>" in line:
                continue
            counts[name] = counts.get(name, 0) + 1
            if name == "execve":
                continue
            shape = _normalize(name, args, scope)
            if _mutating(name, args, scope) is not None:
                points.append(CrashPoint(name, counts[name], shape))
                reply = None
            elif reply is None and points and name in ("write", "writev"):
                # the first thing written elsewhere (a reply, the output,
                # a log line) after the last change: done on disk, not
                # yet said
                reply = CrashPoint(name, counts[name], shape)
    if reply is not None:
        points.append(reply)
    return points


def killed_call(path, scope):
    """(syscall, shape) of the call a killed run stopped at (the last
    call of the first process, entered and never returned), or None."""
    last = None
    with open(path, errors="replace") as f:
        text = f.read()
    first = LINE_RX.search(text)
    for m in LINE_RX.finditer(text):
        if first and m.group(1) == first.group(1) and \
                "resumed>" not in m.group(0):
            last = m
    if last is None or not last.group(3).rstrip().endswith("= ?"):
        return None
    return last.group(2), _normalize(last.group(2), last.group(3), scope)


def strace_args(trace_path, point=None):
    args = [STRACE, "-f", "-q", "-y", "-o", trace_path,
            "-e", "trace=" + MUTATING + ",execve"]
    if point is not None:
        args += ["-e", "inject=%s:signal=KILL:when=%d" % (point.syscall,
                                                           point.k)]
    return args


# --- mail homes -----------------------------------------------------------

def snapshot(dc, users, dest):
    """Copies the users' homes (and mail_temp_dir) to dest."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    for u in users:
        if os.path.exists(dc.home(u)):
            subprocess.run(["cp", "-a", dc.home(u),
                            os.path.join(dest, u)], check=True)


def restore(dc, users, src):
    """Puts the users' homes back as snapshot() saw them, with owners
    and modes; the mail processes keep no state across sessions."""
    for u in users:
        shutil.rmtree(dc.home(u), ignore_errors=True)
        if os.path.exists(os.path.join(src, u)):
            subprocess.run(["cp", "-a", os.path.join(src, u), dc.home(u)],
                           check=True)
    tmp = getattr(dc, "mail_temp_dir", None)
    if tmp:
        for name in os.listdir(tmp):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(tmp, name))


def stale_locks(dc, users):
    out = []
    for u in users:
        for d, _, files in os.walk(dc.home(u)):
            out += [os.path.join(d, n) for n in files if "lock" in n]
    return out


# --- services under strace ------------------------------------------------

WRAPPER = """#!/bin/sh
# crash-point wrapper for {binary} (tests/integration/crash_util.py): armed for
# one start by {arm}, it runs the binary under strace; else plainly.
if mv {arm} {arm}.$$ 2>/dev/null; then
	set -- $(cat {arm}.$$) -- {binary} "$@"
	rm -f {arm}.$$
	exec {strace} -DDD "$@"
fi
exec {binary} "$@"
"""


def service_conf(crash_dir, services=("pop3", "lmtp")):
    """Config lines that route pop3/lmtp through armable wrappers; one
    process per connection, so one session is one traced process."""
    conf = ""
    for svc in services:
        wrapper = os.path.join(crash_dir, svc + "-wrap")
        with open(wrapper, "w") as f:
            f.write(WRAPPER.format(binary="/usr/lib/dovecot/" + svc,
                                   arm=os.path.join(crash_dir, svc + ".arm"),
                                   strace=STRACE))
        os.chmod(wrapper, 0o755)
        # one session per process: 2.4 renamed service_count
        conf += ("service %s {\n  executable = %s\n  %s = 1\n}\n"
                 % (svc, wrapper, harness.by_version(
                     "service_count", "restart_request_count")))
    return conf


def arm(crash_dir, svc, trace_path, point=None, env=None):
    args = strace_args(trace_path, point)[1:]
    for kv in (env or {}).items():
        args = ["-E", "%s=%s" % kv] + args
    tmp = os.path.join(crash_dir, svc + ".arm.new")
    with open(tmp, "w") as f:
        f.write(" ".join(args) + "\n")
    os.rename(tmp, os.path.join(crash_dir, svc + ".arm"))


def disarm(crash_dir, svc):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(crash_dir, svc + ".arm"))


def wait_trace_end(path, timeout=30):
    """Waits until strace has written the traced process's end into its log
    (the crash-point tools read the log only after that line, so a kill's
    "+++ killed" and every call before it are there)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                text = f.read()
            first = LINE_RX.match(text)
            if first and re.search(r"^%s +\+\+\+ (exited|killed)" %
                                   first.group(1), text, re.M):
                return True
        time.sleep(0.01)
    return False


# --- clients with the session deadline ------------------------------------

def pop3(dc, user, password=None):
    c = harness.Pop3.__new__(harness.Pop3)
    harness.LineClient.__init__(c, dc.ports["pop3"], timeout=SESSION_TIMEOUT)
    c.greeting = c.readline()
    r = c.login(user, password or dc.users[user].password)
    if not r.startswith("+OK"):
        c.close()
        raise AssertionError("POP3 login %s: %s" % (user, r))
    return c


def imap(dc, user):
    c = harness.Imap(dc.ports["imap"], timeout=SESSION_TIMEOUT)
    r = c.login(user, dc.users[user].password)
    if " OK" not in r:
        c.close()
        raise AssertionError("IMAP login %s: %s" % (user, r))
    return c


def lmtp_deliver(dc, user, msg):
    c = harness.Lmtp.__new__(harness.Lmtp)
    harness.LineClient.__init__(c, dc.ports["lmtp"], timeout=SESSION_TIMEOUT)
    c.greeting = c.readline()
    c.command("LHLO popvault.test")
    try:
        return c.deliver(user, msg)[user]
    finally:
        c.quit()


# --- inventories ----------------------------------------------------------

MID_RX = re.compile(rb"Message-ID: (<[^>]+>)", re.I)


def _digest(box, body):
    """(mailbox, sha256 of the message, sha256 from its first From:
    header): a message delivered again differs in the Received and
    Delivered-To headers Dovecot puts on top, and only there."""
    start = max(0, body.find(b"From: "))
    return (box, hashlib.sha256(body).hexdigest(),
            hashlib.sha256(body[start:]).hexdigest())


def imap_inventory(dc, user):
    """{message-id: sorted [(mailbox, sha256)]} over IMAP."""
    inv = {}
    c = imap(dc, user)
    try:
        for box in list_mailboxes(c):
            st, out = c.command('EXAMINE "%s"' % box)
            if " OK" not in st:
                raise AssertionError("EXAMINE %s: %s" % (box, st))
            if re.search(rb"\* 0 EXISTS", out):
                continue
            st, out = c.command("FETCH 1:* (BODY.PEEK[])")
            if " OK" not in st:
                raise AssertionError("FETCH in %s: %s" % (box, st))
            for m in re.finditer(rb"BODY\[\] \{(\d+)\}\r\n", out):
                body = out[m.end():m.end() + int(m.group(1))]
                mid = MID_RX.search(body)
                key = mid.group(1).decode() if mid else "?"
                inv.setdefault(key, []).append(_digest(box, body))
    finally:
        c.logout()
    return {k: sorted(v) for k, v in inv.items()}


def doveadm_inventory(dc, user, opts=()):
    """The same over doveadm fetch (for a key password given with -o,
    where no login password is at hand); None when it can't read."""
    p = subprocess.run([harness.DOVEADM, "-c", dc.config_path]
                       + harness.host_doveadm_args(opts)
                       + ["-f", "json", "fetch", "-u", user,
                          "mailbox text", "all"],
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        return None
    inv = {}
    for row in json.loads(p.stdout.decode(errors="surrogateescape") or "[]"):
        body = row["text"].encode(errors="surrogateescape")
        mid = MID_RX.search(body)
        key = mid.group(1).decode() if mid else "?"
        inv.setdefault(key, []).append(_digest(row["mailbox"], body))
    return {k: sorted(v) for k, v in inv.items()}


def wait_session_end(dc, comm="pop3"):
    """A POP3 session's work goes on after its QUIT reply (move
    recovery, the retention sweep): wait for its process to end."""
    dc.wait_sessions_end(comm, SESSION_TIMEOUT)


def pop3_view(dc, user, password=None):
    """{message-id: uidl} of what POP3 lists (UIDL, TOP n 0), once the
    session's process has ended."""
    c = pop3(dc, user, password)
    try:
        view = {}
        for n, uidl in c.uidl():
            r, lines = c.multi("TOP %s 0" % n)
            mid = "?"
            for l in lines or ():
                if l.lower().startswith("message-id: "):
                    mid = l.split(" ", 1)[1].strip()
            view[mid] = uidl
        c.quit()
    finally:
        c.close()
    wait_session_end(dc)
    return view


def compare(before, after, ref, phase):
    """Violations of after against before (the starting inventory) and
    ref (where an uninterrupted run ends). In the middle (phase
    "crash"), each message must be where it was or where the run puts
    it; at the end (phase "rerun"), exactly where the uninterrupted run
    put it."""
    out = []
    for mid in sorted(set(before) | set(ref) | set(after)):
        # a message this run delivered: the same from its own headers on
        n = 1 if mid in before else 2
        b, r, a = [[(x[0], x[n]) for x in inv.get(mid, [])]
                   for inv in (before, ref, after)]
        if phase == "rerun" or not b:
            ok = a == r
        else:
            ok = a in (b, r)
        if ok:
            continue
        digests = {d for _, d in b + r}
        if any(d not in digests for _, d in a):
            out.append(("damaged", "%s: bytes changed %s" % (mid, a)))
        elif len(a) < min(len(b), len(r)) or (not a and (b or r)):
            out.append(("lost", "%s: was %s, now %s, expected %s" % (
                mid, b, a, r)))
        elif len(a) > max(len(b), len(r)):
            boxes = [x for x, _ in a]
            kind = "duplicated" if b and b[0][0] in boxes else "twice"
            out.append((kind, "%s: in %s, expected %s" % (mid, boxes, r)))
        else:
            out.append(("misplaced", "%s: in %s, was %s, expected %s" % (
                mid, a, b, r)))
    return out


def compare_uidls(before, after, ref, phase, may_vanish=()):
    """POP3's view against the start and the uninterrupted run: the
    messages there before keep their UIDLs (or get the run's), none
    hidden or shown that the run did not hide or show. A message the
    run delivered is only looked for (its UID depends on whether one
    that may vanish got one first)."""
    out = []
    if None in (before, after, ref):
        return out
    for mid, uidl in after.items():
        if mid not in before and mid in ref:
            continue
        allowed = {ref.get(mid)} if phase == "rerun" else \
            {before.get(mid), ref.get(mid)}
        if uidl not in allowed:
            out.append(("uidl", "%s: UIDL %s, expected %s" % (
                mid, uidl, sorted(x for x in allowed if x))))
    for mid in set(ref) - set(after) - set(may_vanish):
        if phase == "rerun" or mid not in before:
            out.append(("hidden", "%s: POP3 no longer lists it" % mid))
    for mid in set(after) - set(ref) - set(before):
        out.append(("shown", "%s: POP3 lists it again" % mid))
    return out


def file_dict(path):
    """The {key: value} of a Dovecot file dict (key and value lines), None
    when there is no file; raises ValueError on anything else."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = f.read().split("\n")
    if lines[-1] != "" or len(lines) % 2 != 1:
        raise ValueError("not a file dict: %r" % lines[:6])
    return dict(zip(lines[0:-1:2], lines[1:-1:2]))


LAST_LOGIN_KEY = "priv/popvault/last-login"


def last_login(dc, user):
    """The LOGIN-DELAY time of the user's last full login, from the
    default file dict in the home (None: no dict or no login yet)."""
    kv = file_dict(os.path.join(dc.home(user), "popvault.dict"))
    return None if kv is None else kv.get(LAST_LOGIN_KEY)


def pop3_login(dc, user):
    """(first reply line to PASS, message count or None, seconds): a POP3
    login that may be refused (LOGIN-DELAY), with the session deadline."""
    t0 = time.time()
    c = harness.Pop3.__new__(harness.Pop3)
    harness.LineClient.__init__(c, dc.ports["pop3"], timeout=SESSION_TIMEOUT)
    try:
        c.greeting = c.readline()
        reply = c.login(user, dc.users[user].password)
        count = None
        if reply.startswith("+OK"):
            count = c.stat()[0]
            c.quit()
    finally:
        c.close()
    wait_session_end(dc)
    return reply, count, time.time() - t0


# --- keys -----------------------------------------------------------------

_sodium = None


def sodium():
    global _sodium
    if _sodium is None:
        _sodium = ctypes.CDLL(ctypes.util.find_library("sodium") or
                              "libsodium.so.23")
        assert _sodium.sodium_init() >= 0
    return _sodium


def key_texts(keys_dir):
    out = {}
    if os.path.isdir(keys_dir):
        for name in sorted(os.listdir(keys_dir)):
            if re.match(r"^[0-9a-f]{16}\.key$", name):
                with open(os.path.join(keys_dir, name)) as f:
                    out[name] = f.read()
    return out


def recovery_opens(keys_dir, recovery):
    """Names of the key files whose private key `recovery` does NOT
    open (the seal must open and derive the file's public key)."""
    lib = sodium()
    rsk = bytes.fromhex(recovery[len("pvrk1-"):].replace("-", ""))
    rpk = ctypes.create_string_buffer(32)
    assert lib.crypto_scalarmult_base(rpk, rsk) == 0
    failed = []
    for name, text in key_texts(keys_dir).items():
        pub = re.search(r"^public ([0-9a-f]{64})$", text, re.M)
        opened = False
        for m in re.finditer(r"^private recovery-v1 \S+ ([0-9a-f]+)$", text,
                             re.M):
            sealed = bytes.fromhex(m.group(1))
            sk = ctypes.create_string_buffer(32)
            if lib.crypto_box_seal_open(sk, sealed,
                                        ctypes.c_ulonglong(len(sealed)),
                                        rpk.raw, rsk) != 0:
                continue
            pk = ctypes.create_string_buffer(32)
            lib.crypto_scalarmult_base(pk, sk.raw)
            if pub and pk.raw.hex() == pub.group(1):
                opened = True
        if not opened:
            failed.append(name)
    return failed


RECOVERY_RX = re.compile(r"pvrk1-[0-9a-f]{8}(?:-[0-9a-f]{8}){7}")


# --- running doveadm ------------------------------------------------------

def doveadm_traced(dc, args, trace_path, point=None, input=None, env=None):
    """(rc, stdout, stderr) of doveadm under strace; rc -9 when killed."""
    run_env = dict(harness.sanitizer_env() or os.environ)
    if env:
        run_env.update(env)
    p = subprocess.run(strace_args(trace_path, point) +
                       [harness.DOVEADM, "-c", dc.config_path] +
                       harness.host_doveadm_args(args),
                       input=input, capture_output=True, timeout=120,
                       env=run_env)
    return (p.returncode, p.stdout.decode(errors="replace"),
            p.stderr.decode(errors="replace"))


FAKETIME_ENV = {"LD_PRELOAD": harness.FAKETIME_LIB,
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "FAKETIME_NO_CACHE": "1", "NO_FAKE_STAT": "1"}


def faketime_env(offset):
    return dict(FAKETIME_ENV, FAKETIME=offset)


def log_crashes(dc, since):
    """Panic/Fatal lines (other than the kills themselves) since an
    offset of the log."""
    with open(dc.log_path, errors="replace") as f:
        f.seek(since)
        text = f.read()
    return [l for l in text.splitlines()
            if ("Panic:" in l or "Fatal:" in l) and "killed" not in l]

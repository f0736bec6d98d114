#!/usr/bin/env python3
"""Fault injection (issue 8): kill -9 the pop3, lmtp and doveadm processes
at random points of popvault's operations, then check from an inventory
taken before each fault (Message-ID -> sha256 of the message, read over
IMAP, not through popvault's internals) that every message still exists
exactly once in a place it may be, reads byte-exact, and that no action
was applied twice. Bounded in count and time; 127.0.0.1 only; kills only
processes of the Dovecot it started (children of its master, by PID) and
its own doveadm runs.

  tests/fault/fault_inject.py --build-dir build [--points 300] [--seed N]

Prints the kill points per operation and the totals of lost, duplicated
and damaged messages; exits non-zero unless all three are 0."""

import argparse
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import harness  # noqa: E402
from harness import User, dovecot, make_message  # noqa: E402
from crypt_util import crypt_dovecot, enc_fields  # noqa: E402
from policy_util import list_mailboxes  # noqa: E402


class KillDelay:
    """Random kill delays in [0, limit), the limit adapting to the
    process: shorter after a miss (it had finished), longer after a hit,
    so about half the tries land while it runs, anywhere in its life."""

    def __init__(self, limit, low, high):
        self.limit, self.low, self.high = limit, low, high

    def draw(self, rnd):
        return rnd.uniform(0, self.limit)

    def hit(self, alive):
        self.limit = min(self.high, max(self.low, self.limit *
                                        (1.15 if alive else 0.85)))


class Totals:
    def __init__(self):
        self.points = {}
        self.lost = self.duplicated = self.twice = self.damaged = 0
        self.problems = []

    def problem(self, op, what):
        if len(self.problems) < 30:
            self.problems.append("%s: %s" % (op, what))


def inventory(dc, user):
    """{message-id: [(mailbox, sha256)]} over every mailbox, over IMAP."""
    inv = {}
    # A process killed between creating dovecot-uidlist.lock (O_EXCL)
    # and writing its pid into it leaves a lock that Dovecot can't prove
    # stale by pid: the next sync waits for its 120 s stale timeout
    # (MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT), then takes the lock over.
    # Slower, not lost: wait it out.
    c = dc.imap(user, timeout=150)
    try:
        for box in list_mailboxes(c):
            st, out = c.command('EXAMINE "%s"' % box)
            if " OK" not in st or re.search(rb"\* 0 EXISTS", out):
                continue
            st, out = c.command("FETCH 1:* (BODY.PEEK[])")
            if " OK" not in st:
                # a message that can't be read is damage, never silence
                raise AssertionError("FETCH in %s: %s" % (box, st))
            for m in re.finditer(rb"BODY\[\] \{(\d+)\}\r\n", out):
                body = out[m.end():m.end() + int(m.group(1))]
                mid = re.search(rb"Message-ID: (<[^>]+>)", body)
                key = mid.group(1).decode() if mid else "?"
                inv.setdefault(key, []).append(
                    (box, hashlib.sha256(body).hexdigest()))
    finally:
        c.logout()
    return inv


def check(totals, op, before, after, allowed_boxes, may_vanish=()):
    """Every message of before exactly once in allowed_boxes with the same
    bytes, unless its Message-ID is in may_vanish (then at most once)."""
    for mid, places in before.items():
        digest = places[0][1]
        now = after.get(mid, [])
        if not now:
            if mid not in may_vanish:
                totals.lost += 1
                totals.problem(op, "lost %s" % mid)
            continue
        if len(now) > 1:
            # still in its first place too: a move or conversion left
            # half done; only in places an action puts it: one action
            # (a move, a copy) applied twice
            places_now = [b for b, _ in now]
            if places[0][0] in places_now:
                totals.duplicated += 1
                totals.problem(op, "duplicated %s in %s" % (mid, places_now))
            else:
                totals.twice += 1
                totals.problem(op, "applied twice: %s in %s" % (
                    mid, places_now))
        for box, d in now:
            if box not in allowed_boxes:
                totals.problem(op, "%s in %s" % (mid, box))
                totals.lost += 1
            if d != digest:
                # moves keep bytes; only the sweep and the tools may not
                # change them either
                totals.damaged += 1
                totals.problem(op, "bytes of %s changed" % mid)


def children(master_pid, comm):
    """PIDs of the master's children whose /proc comm is comm."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%s/comm" % pid) as f:
                name = f.read().strip()
        except OSError:
            continue
        if int(fields[1]) == master_pid and name == comm:
            out.append(int(pid))
    return out


def kill_children(dc, comm):
    killed = 0
    for pid in children(dc.proc.pid, comm):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def wait_gone(dc, comm, timeout=5):
    deadline = time.time() + timeout
    while children(dc.proc.pid, comm) and time.time() < deadline:
        time.sleep(0.01)


# --- operations -----------------------------------------------------------

POLICIES = [
    ("move", {"popvault_after_retr": "move:Archive",
              "popvault_on_dele": "move:Trash"}),
    ("hide", {"popvault_after_retr": "hide", "popvault_on_dele": "hide"}),
    ("delete", {"popvault_after_retr": "delete",
                "popvault_on_dele": "expunge"}),
    ("keep", {"popvault_after_retr": "keep", "popvault_on_dele": "keep"}),
]


def op_pop3(totals, n_points, rnd, deadline):
    """RETR, DELE and QUIT pipelined under each policy, pop3 killed at a
    random moment of the reply or of QUIT's commit."""
    users = [User("p" + name, fields=f) for name, f in POLICIES]
    with dovecot(users, debug=False,
                 extra_conf="mail_fsync = always\n") as dc:
        n = 0
        # the inventory after a user's last point is the one before its
        # next, unless mail was delivered or archives emptied meanwhile
        last = {}
        delay = KillDelay(0.03, 0.001, 0.1)
        while n < n_points and time.time() < deadline:
            for u in users:
                inv = last.get(u.name) or inventory(dc, u.name)
                boxes = [b for p in inv.values() for b, _ in p]
                if boxes.count("INBOX") < 6:
                    dc.deliver_many(u.name, [make_message(
                        "f%d" % rnd.randrange(10**9),
                        body="x" * rnd.randrange(100, 20000) + "\r\n")
                        for _ in range(8)])
                    inv = None
                if len(boxes) - boxes.count("INBOX") > 40:
                    # checked already: keep the inventories small
                    for box in ("Archive", "Trash"):
                        dc.doveadm("expunge", "-u", u.name, "mailbox", box,
                                   "all", check=False)
                    inv = None
                if inv is None:
                    inv = inventory(dc, u.name)
                p = dc.pop3(u.name)
                count = p.stat()[0]
                retr = rnd.sample(range(1, count + 1), min(3, count))
                dele = rnd.sample(range(1, count + 1), min(2, count))
                # what this session may legitimately remove for good
                asked = set()
                for i in (set(retr) | set(dele)
                          if u.name == "pdelete" else ()):
                    r, lines = p.multi("TOP %d 0" % i)
                    for l in lines or ():
                        if l.lower().startswith("message-id: "):
                            asked.add(l.split(" ", 1)[1].strip())
                cmds = "".join("RETR %d\r\n" % i for i in retr) + \
                    "".join("DELE %d\r\n" % i for i in dele) + "QUIT\r\n"
                p.send(cmds)
                time.sleep(delay.draw(rnd))
                k = kill_children(dc, "pop3")
                delay.hit(k > 0)
                p.close()
                wait_gone(dc, "pop3")
                clear_stale_locks(dc, u.name)
                # what a kill cut short is finished after the next
                # session: run one (STAT, QUIT) before checking
                q = dc.pop3(u.name)
                q.stat()
                q.quit()
                wait_gone(dc, "pop3")
                if k:
                    n += 1
                after = inventory(dc, u.name)
                last[u.name] = after
                # delete/expunge may remove what the session asked for;
                # everything else stays somewhere allowed
                vanish = asked if u.name == "pdelete" else set()
                check(totals, "pop3/" + u.name, inv, after,
                      ("INBOX", "Archive", "Trash"), vanish)
                if n >= n_points:
                    break
        totals.points["pop3 RETR/DELE/QUIT"] = n
        crashes(dc, totals, "pop3")


def op_lmtp(totals, n_points, rnd, deadline):
    """Encrypted delivery of large messages, lmtp killed mid-transaction:
    a message is stored whole and encrypted, or not at all."""
    users = [User("lm", fields=enc_fields())]
    with crypt_dovecot(users, debug=False) as dc:
        n = 0
        delivered = {}
        while n < n_points and time.time() < deadline:
            msg = make_message("big%d" % n, body=("line %d\r\n" % n) *
                               rnd.randrange(2000, 60000))
            mid = re.search(rb"Message-ID: (<[^>]+>)", msg).group(1).decode()
            c = dc.lmtp()
            c.command("MAIL FROM:<s@example.com>")
            c.command("RCPT TO:<lm>")
            r = c.command("DATA")
            c.send(msg + b"\r\n.\r\n")
            time.sleep(rnd.uniform(0, 0.05))
            k = kill_children(dc, "lmtp")
            try:
                reply = c.readline()
            except (EOFError, OSError):
                reply = ""
            c.close()
            wait_gone(dc, "lmtp")
            if k:
                n += 1
            inv = inventory(dc, "lm")
            got = inv.get(mid, [])
            if reply.startswith("250") and len(got) != 1:
                totals.lost += 1
                totals.problem("lmtp", "250 but %d copies of %s" % (
                    len(got), mid))
            if len(got) > 1:
                totals.duplicated += 1
                totals.problem("lmtp", "duplicated %s" % mid)
            for box, digest in got:
                if not digest:
                    totals.damaged += 1
            if got:
                delivered[mid] = got[0][1]
            for old, digest in delivered.items():
                if [d for _, d in inv.get(old, [])] != [digest]:
                    totals.lost += 1
                    totals.problem("lmtp", "earlier %s changed" % old)
        # no plaintext and no partial container left on disk
        for path in harness_files(dc, "lm"):
            with open(path, "rb") as f:
                data = f.read()
            if b"line 1\r\n" in data or (data and not data.startswith(
                    b"\x89PVLT") and b"\x89PVLT" not in data[:200]):
                totals.damaged += 1
                totals.problem("lmtp", "plaintext or partial file %s" % path)
        totals.points["lmtp encrypted delivery"] = n
        crashes(dc, totals, "lmtp")


def harness_files(dc, user):
    for d, _, files in os.walk(dc.home(user)):
        if os.path.basename(d) in ("new", "cur"):
            for name in files:
                yield os.path.join(d, name)


def doveadm_killed(dc, args, rnd, delay, faketime=None):
    """Runs doveadm and kills it after a random delay (a KillDelay);
    TRUE if it was still running when killed."""
    env = harness.sanitizer_env() or dict(os.environ)
    if faketime:
        env = dict(env, LD_PRELOAD=harness.FAKETIME_LIB, FAKETIME=faketime,
                   FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_NO_CACHE="1",
                   NO_FAKE_STAT="1")
    p = subprocess.Popen([harness.DOVEADM, "-c", dc.config_path] + args,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=env)
    time.sleep(delay.draw(rnd))
    alive = p.poll() is None
    if alive:
        p.kill()
    p.wait()
    delay.hit(alive)
    return alive


def clear_stale_locks(dc, user):
    # a killed maildir writer leaves its dotlock behind; Dovecot would
    # wait for it to go stale (2 min) before the next run
    for d, _, files in os.walk(dc.home(user)):
        for name in files:
            if name.endswith(".lock"):
                os.unlink(os.path.join(d, name))


def op_sweep(totals, n_points, rnd, deadline):
    """doveadm popvault sweep moving never-downloaded mail, killed."""
    users = [User("sw", fields={"popvault_retain_unread": "1d",
                                "popvault_expire_action": "move:Expired"})]
    with dovecot(users, debug=False) as dc:
        n = 0
        delay = KillDelay(0.15, 0.01, 1.0)
        while n < n_points and time.time() < deadline:
            inv = inventory(dc, "sw")
            if sum(1 for p in inv.values() for b, _ in p
                   if b == "INBOX") < 10:
                dc.deliver_many("sw", [make_message(
                    "s%d" % rnd.randrange(10**9)) for _ in range(30)])
                inv = inventory(dc, "sw")
            if doveadm_killed(dc, ["popvault", "sweep", "-u", "sw"], rnd,
                              delay, faketime="+2d"):
                n += 1
            clear_stale_locks(dc, "sw")
            # a move the kill cut short is finished after the next POP3
            # session (or sweep): check after one
            q = dc.pop3("sw")
            q.stat()
            q.quit()
            time.sleep(0.05)
            check(totals, "sweep", inv, inventory(dc, "sw"),
                  ("INBOX", "Expired"))
        totals.points["doveadm popvault sweep"] = n
        crashes(dc, totals, "sweep")


def plant_plaintext(dc, user, rnd, count):
    """Legacy plaintext mail, as it sat there before encryption was
    turned on: message files written into Maildir/new/ directly (one
    doveadm save per message took most of this operation's time)."""
    new = os.path.join(dc.home(user), "Maildir", "new")
    os.makedirs(new, exist_ok=True)
    planted = {}
    for _ in range(count):
        msg = make_message("e%d" % rnd.randrange(10**9),
                           body="y" * 3000 + "\r\n")
        mid = re.search(rb"Message-ID: (<[^>]+>)", msg).group(1).decode()
        # as inventory() sees it: IMAP sends CRLF line ends
        planted[mid] = [("INBOX", hashlib.sha256(msg).hexdigest())]
        name = "%d.M%dP%d.plant" % (time.time(), rnd.randrange(10**9),
                                   os.getpid())
        path = os.path.join(new, name)
        with open(path, "wb") as f:
            # LF line ends, as Dovecot stores mail (mail_save_crlf=no)
            f.write(msg.replace(b"\r\n", b"\n"))
        os.chown(path, dc.mail_uid, dc.mail_gid)
    for d in (dc.home(user), os.path.join(dc.home(user), "Maildir"), new):
        os.chown(d, dc.mail_uid, dc.mail_gid)
    return planted


def op_encrypt(totals, n_points, rnd, deadline):
    """doveadm popvault encrypt of plaintext mail, killed; the next run
    finishes the job (it is checked after that run: between a copy and
    its original's expunge the mailbox holds both by design)."""
    users = [User("en", fields=enc_fields())]
    with crypt_dovecot(users, debug=False) as dc:
        n = 0
        inv = {}
        delay = KillDelay(0.4, 0.01, 2.0)
        while n < n_points and time.time() < deadline:
            # before = the last check's inventory and what is planted now
            inv = dict(inv, **plant_plaintext(dc, "en", rnd, 6))
            if doveadm_killed(dc, ["popvault", "encrypt", "-u", "en"], rnd,
                              delay):
                n += 1
            clear_stale_locks(dc, "en")
            dc.doveadm("popvault", "encrypt", "-u", "en")
            after = inventory(dc, "en")
            check(totals, "encrypt", inv, after, ("INBOX",))
            inv = after
        for path in harness_files(dc, "en"):
            with open(path, "rb") as f:
                if b"yyyyyyyy" in f.read():
                    totals.damaged += 1
                    totals.problem("encrypt", "plaintext left in %s" % path)
        totals.points["doveadm popvault encrypt"] = n
        crashes(dc, totals, "encrypt")


def crashes(dc, totals, op):
    for line in dc.log().splitlines():
        if "Panic:" in line or "Fatal:" in line and "killed" not in line:
            totals.problem(op, "log: " + line)
            totals.damaged += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--points", type=int, default=300,
                    help="kill points in all")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-seconds", type=int, default=600)
    args = ap.parse_args()
    harness.BUILD_DIR = os.path.abspath(args.build_dir)
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rnd = random.Random(seed)
    start = time.time()
    deadline = start + args.max_seconds
    totals = Totals()
    share = {"pop3": 0.4, "lmtp": 0.2, "sweep": 0.2, "encrypt": 0.2}
    took = {}
    for name, fn in (("pop3", op_pop3), ("lmtp", op_lmtp),
                     ("sweep", op_sweep), ("encrypt", op_encrypt)):
        t0 = time.time()
        fn(totals, int(args.points * share[name] + 0.5), rnd, deadline)
        took[name] = time.time() - t0
    total = sum(totals.points.values())
    print("fault injection, seed %d, %.0f s" % (seed, time.time() - start))
    for (op, n), secs in zip(totals.points.items(), took.values()):
        print("  %-28s %4d kill points  %5.1f s" % (op, n, secs))
    print("  %-28s %4d" % ("total", total))
    print("messages lost: %d, duplicated: %d, applied twice: %d, damaged: %d"
          % (totals.lost, totals.duplicated, totals.twice, totals.damaged))
    for p in totals.problems:
        print("  " + p)
    ok = (totals.lost == totals.duplicated == totals.twice ==
          totals.damaged == 0 and
          not totals.problems and total >= args.points)
    if total < args.points:
        print("only %d of %d kill points within the time limit" % (
            total, args.points))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

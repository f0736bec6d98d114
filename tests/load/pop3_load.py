#!/usr/bin/env python3
"""Load test (issue 8): many concurrent POP3 sessions over many users with
policies and encryption on, while LMTP keeps delivering. Bounded in time
and talks only to the private Dovecot it starts on 127.0.0.1.

  tests/load/pop3_load.py --build-dir build [--sessions 200] [--users 50]
                          [--seconds 60]

Each session: USER/PASS, STAT, UIDL, RETR of up to three messages, DELE of
one (popvault_on_dele=hide keeps the mailbox populated), QUIT. An error is
any reply that is not +OK where +OK is due, a connection that fails, or a
message whose bytes do not end with a body popvault delivered. Prints
sessions/s, messages/s and errors; exits non-zero on any error."""

import argparse
import os
import random
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import harness  # noqa: E402
from harness import User, make_message  # noqa: E402
from crypt_util import crypt_dovecot, enc_fields  # noqa: E402

LIMITS = """default_process_limit = 600
default_client_limit = 4000
mail_max_userip_connections = 1000
service pop3 {
  process_limit = 600
}
service pop3-login {
  process_limit = 600
}
service auth {
  client_limit = 4000
}
service anvil {
  client_limit = 4000
}
"""


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sessions = self.messages = self.bytes = self.delivered = 0
        self.errors = []

    def error(self, what):
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(what)
            else:
                self.errors.append(None)


def body_of(user, i):
    return "load body %s %d\r\n" % (user, i) * 40


def session(dc, user, stats):
    p = dc.pop3()
    try:
        r = p.login(user.name, user.password)
        if not r.startswith("+OK"):
            return stats.error("%s login: %s" % (user.name, r))
        count, _ = p.stat()
        p.uidl()
        got = 0
        for n in random.sample(range(1, count + 1), min(3, count)):
            r, lines = p.multi("RETR %d" % n)
            if not r.startswith("+OK"):
                return stats.error("%s RETR %d: %s" % (user.name, n, r))
            if not lines or not lines[-1].startswith("load body " +
                                                     user.name):
                return stats.error("%s RETR %d: wrong bytes" % (user.name,
                                                                n))
            got += 1
            with stats.lock:
                stats.bytes += sum(len(l) + 2 for l in lines)
        if count > 20:
            r = p.command("DELE %d" % random.randint(1, count))
            if not r.startswith("+OK"):
                return stats.error("%s DELE: %s" % (user.name, r))
        r = p.quit()
        if not r.startswith("+OK"):
            return stats.error("%s QUIT: %s" % (user.name, r))
        with stats.lock:
            stats.sessions += 1
            stats.messages += got
    except Exception as e:   # any failure of the server counts
        stats.error("%s: %r" % (user.name, e))
    finally:
        p.close()


def worker(dc, users, stats, deadline):
    while time.time() < deadline:
        session(dc, random.choice(users), stats)


def deliverer(dc, users, stats, deadline):
    i = 1000
    c = dc.lmtp()
    try:
        while time.time() < deadline:
            u = random.choice(users)
            r = c.deliver(u.name, make_message(
                "load %d" % i, body=body_of(u.name, i)))[u.name]
            if not r.startswith("250"):
                stats.error("LMTP %s: %s" % (u.name, r))
            else:
                with stats.lock:
                    stats.delivered += 1
            i += 1
    except Exception as e:
        stats.error("LMTP: %r" % e)
    finally:
        c.quit()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--messages", type=int, default=30,
                    help="messages per user before the run")
    args = ap.parse_args()
    harness.BUILD_DIR = os.path.abspath(args.build_dir)

    users = [User("load%02d" % i, fields=enc_fields(
        popvault_after_retr="keep", popvault_on_dele="hide",
        popvault_retain_downloaded="14d", popvault_uidl_ledger="yes"))
        for i in range(args.users)]
    stats = Stats()
    with crypt_dovecot(users, debug=False, extra_conf=LIMITS) as dc:
        for u in users:
            dc.deliver_many(u.name, [make_message(
                "pre %d" % i, body=body_of(u.name, i))
                for i in range(args.messages)])
        print("load: %d users x %d messages delivered, %d sessions for "
              "%d s" % (args.users, args.messages, args.sessions,
                        args.seconds))
        start = time.time()
        deadline = start + args.seconds
        threads = [threading.Thread(target=worker,
                                    args=(dc, users, stats, deadline))
                   for _ in range(args.sessions)]
        threads.append(threading.Thread(target=deliverer,
                                        args=(dc, users, stats, deadline)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - start
        crashes = [l for l in dc.log().splitlines()
                   if "Panic:" in l or "Fatal:" in l or
                   "killed with signal" in l]
    for c in crashes[:5]:
        stats.error("log: " + c)
    print("load: %.0f s, %d POP3 sessions (%.1f/s), %d messages retrieved "
          "(%.1f/s, %.1f MB), %d delivered over LMTP (%.1f/s)" % (
              elapsed, stats.sessions, stats.sessions / elapsed,
              stats.messages, stats.messages / elapsed, stats.bytes / 1e6,
              stats.delivered, stats.delivered / elapsed))
    print("load: %d errors" % len(stats.errors))
    for e in stats.errors:
        if e is not None:
            print("  " + e)
    return 1 if stats.errors or stats.sessions == 0 else 0


if __name__ == "__main__":
    sys.exit(main())

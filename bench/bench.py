#!/usr/bin/env python3
"""popvault benchmark: plain Dovecot, mail_crypt and popvault side by side.

One private Dovecot on 127.0.0.1 (tests/integration/harness.py) serves
three users with the same mailbox contents:

  plain      mail_plugins empty: Dovecot as shipped, no plugin at all
  mailcrypt  mail_plugins = mail_crypt, global EC key, save version 2
  popvault   mail_plugins = popvault, after_retr=keep, retain_downloaded=14d,
             uidl_ledger=yes, plus popvault_encrypt=yes when the build
             encrypts (detected by a probe server first)

Each workload runs on the users interleaved (plain, mailcrypt, popvault,
plain, ...) for --reps repetitions after one untimed warm-up where the
workload reads mail. Results (table.txt, results.json, ratios.png) go to
build/bench-results/<timestamp>/. docs/performance.md explains it all.
"""

import argparse
import imaplib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
import harness  # noqa: E402
from harness import Dovecot, User  # noqa: E402
import webmail  # noqa: E402

MiB = 1024 * 1024
USERS = ("plain", "mailcrypt", "popvault")
MARKER = b"popvault bench message"

SIZES = {
    # name: (full, quick)
    "lmtp_msgs": (1000, 100),
    "lmtp_size": (20 * 1000, 20 * 1000),
    "retr_msgs": (2000, 100),
    "retr_size": (20 * 1000, 20 * 1000),
    "big_size": (100 * MiB, 5 * MiB),
    "partial_len": (4096, 4096),
    "mailbox_msgs": (100000, 500),
    "mailbox_msg_size": (1000, 1000),
    "webmail_msgs": (2000, 100),
    "webmail_size": (20 * 1000, 20 * 1000),
    "reps": (5, 2),
    # delivery into grown mailboxes (--growth): messages delivered per
    # timed run, per callgrind count, and the two grown mailbox sizes
    "grow_msgs": (300, 50),
    "grow_cg_msgs": (10, 10),
    "grow_size": (20 * 1000, 20 * 1000),
    "grow_mid": (10000, 1000),
    "grow_large": (100000, 5000),
    # into grow_large, every delivery reads a 5 MB dovecot-uidlist (plain
    # and popvault alike): fewer messages there
    "grow_large_msgs": (30, 20),
    "grow_large_cg_msgs": (4, 4),
}

# id, title, unit, what the popvault target compares, target text
WORKLOADS = [
    ("lmtp", "LMTP delivery {lmtp_msgs} x {lmtp_size_h}", "s",
     ("ratio", 1.05), "<= 1.05x plain"),
    ("pop3_retr", "POP3 RETR {retr_msgs} x {retr_size_h} pipelined", "s",
     ("ratio", 1.15), "<= 1.15x plain"),
    ("imap_envelope", "IMAP FETCH 1:* (ENVELOPE), {retr_msgs} msgs", "s",
     None, "-"),
    ("pop3_big", "POP3 RETR 1 x {big_size_h}", "s", None, "-"),
    ("pop3_big_rss", "pop3 peak RSS (VmHWM), RETR {big_size_h}", "MiB",
     ("plus", 2.0), "<= plain + 2 MiB"),
    ("imap_partial", "IMAP BODY.PEEK[]<{partial_off_h}.{partial_len}> of "
     "{big_size_h}", "s", ("ratio", 2.0), "<= 2x plain"),
] + [
    # issue 18: a webmail client opening a folder, the first time after
    # delivery and again (warm); targets for popvault's encrypted cache
    ("webmail_%s_%s" % (phase, cmd), "webmail %s: %s" % (label, title),
     "s", ("ratio", limit), "<= %gx plain" % limit)
    for phase, label, limit in (
        ("first", "1st open, {webmail_msgs} x {webmail_size_h}", 1.5),
        ("warm", "2nd open", 1.2))
    for cmd, title in [(c, t) for c, t, _ in webmail.COMMANDS] + [
        ("total", "total (SELECT + the 4)")]
] + [
    # what the two opens left in the folder's caches (Dovecot's, and
    # popvault's encrypted one)
    ("webmail_cache_size", "webmail cache files after the 2nd open", "MiB",
     ("ratio", 1.5), "<= 1.5x plain"),
] + [
    # issue 18 goal 4: LMTP delivery into a mailbox of 0, grow_mid and
    # grow_large messages (--growth; GrowthBench)
] + [
    (wid % lvl, title.replace("N", "{%s}" % lvl if lvl != "0" else "0"),
     unit, ("ratio", 1.05), "<= 1.05x plain")
    for lvl in ("0", "grow_mid", "grow_large")
    for wid, title, unit in (
        ("lmtp_into_%s", "LMTP {%s} x {grow_size_h} into N msgs" % (
            "grow_large_msgs" if lvl == "grow_large" else "grow_msgs"),
         "s"),
        ("lmtp_into_%s_ir", "  same, callgrind Ir per message", "MIr"))
] + [
    ("pop3_uidl", "login+STAT+UIDL, {mailbox_msgs} msgs", "s",
     ("ratio", 1.05), "<= 1.05x plain"),
    ("pop3_uidl_cold", "first login+STAT+UIDL after import (1 run)", "s",
     None, "-"),
    ("sweep", "doveadm popvault sweep, {mailbox_msgs} msgs", "s",
     ("abs", 2.0), "<= 2 s"),
]


def human(n):
    if n >= MiB and n % MiB == 0:
        return "%d MiB" % (n // MiB)
    if n >= MiB:
        return "%.1f MiB" % (n / MiB)
    if n >= 1000 and n % 1000 == 0:
        return "%d KB" % (n // 1000)
    return "%d B" % n


def log(msg):
    print("bench: " + msg, flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        idx = 1 if args.quick else 0
        self.size = {k: v[idx] for k, v in SIZES.items()}
        for k in SIZES:
            v = getattr(args, k, None)
            if v is not None:
                self.size[k] = v
        self.size["partial_off"] = (args.partial_offset
                                    if args.partial_offset is not None
                                    else self.size["big_size"] * 9 // 10)
        self.bindir = args.bin_dir
        self.samples = {w[0]: {u: [] for u in USERS} for w in WORKLOADS}
        self.notes = {}
        self.features = {}
        self.dc = None
        self.work = None
        self.encrypting = False

    # --- helpers ------------------------------------------------------

    def client(self, prog, *argv, hold_cb=None):
        cmd = [os.path.join(self.bindir, prog)] + [str(a) for a in argv]
        if hold_cb is None:
            p = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=self.args.timeout)
            if p.returncode != 0:
                raise RuntimeError("%s failed: %s\n%s" % (
                    " ".join(cmd), p.stderr.strip(), self.dc.log_tail(15)))
            out = p.stdout
        else:
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            if line.strip() != "hold":
                p.kill()
                raise RuntimeError("%s: no hold: %s %s" % (
                    prog, line, p.stderr.read()))
            hold_cb()
            out, err = p.communicate("\n", timeout=self.args.timeout)
            if p.returncode != 0:
                raise RuntimeError("%s failed: %s" % (prog, err.strip()))
        last = out.strip().splitlines()[-1]
        return dict(kv.split("=", 1) for kv in last.split()[1:])

    def doveadm(self, *args, check=True):
        rc, out, err = self.dc.doveadm(*args, check=False)
        if check and (rc != 0 or re.search(r"\b(Error|Fatal|Panic):", err)):
            raise RuntimeError("doveadm %s: rc=%d %s%s" % (
                " ".join(args), rc, out, err))
        return rc, out, err

    def password(self, user):
        return self.dc.users[user].password

    def port(self, proto):
        return self.dc.ports[proto]

    def clear(self, user):
        self.doveadm("expunge", "-u", user, "mailbox", "INBOX", "all")

    def deliver(self, user, count, size):
        # over LMTP in chunks so a failure names the chunk
        done = 0
        while done < count:
            n = min(count - done, 5000)
            self.client("pv-lmtp", "127.0.0.1", self.port("lmtp"), user,
                        n, size, done)
            done += n

    def stored_files(self, user):
        cur = os.path.join(self.dc.home(user), "Maildir", "cur")
        new = os.path.join(self.dc.home(user), "Maildir", "new")
        files = []
        for d in (cur, new):
            if os.path.isdir(d):
                files += [os.path.join(d, f) for f in os.listdir(d)]
        return files

    def stored_plaintext(self, user):
        """True if a stored message contains the plaintext marker."""
        files = self.stored_files(user)
        if not files:
            return None
        with open(files[0], "rb") as f:
            return MARKER in f.read(64 * 1024)

    # --- feature detection --------------------------------------------

    def make_keys(self, d):
        priv = os.path.join(d, "ecprivkey.pem")
        pub = os.path.join(d, "ecpubkey.pem")
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1",
                        "-genkey", "-noout", "-out", priv + ".ec"],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", priv + ".ec", "-out",
                        priv], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out",
                        pub], check=True, capture_output=True)
        os.unlink(priv + ".ec")
        for p in (priv, pub):
            os.chmod(p, 0o644)
        return priv, pub

    def master_key_candidates(self, d):
        """Key files to try for popvault_master_key, most likely first.
        The format is decided by the encryption work; --master-key
        overrides the guessing."""
        if self.args.master_key:
            return [("given", os.path.abspath(self.args.master_key))]
        out = []
        raw = os.urandom(32)
        for name, data in (("raw32", raw), ("hex", raw.hex().encode() + b"\n"),
                           ("b64", __import__("base64").b64encode(raw)
                            + b"\n")):
            path = os.path.join(d, "master-%s.key" % name)
            with open(path, "wb") as f:
                f.write(data)
            out.append((name, path))
        pem = os.path.join(d, "master-x25519.pem")
        if subprocess.run(["openssl", "genpkey", "-algorithm", "X25519",
                           "-out", pem], capture_output=True).returncode == 0:
            out.append(("x25519-pem", pem))
        for _, p in out:
            os.chmod(p, 0o644)
        return out

    def probe_encryption(self, keydir):
        """Starts a short-lived Dovecot with one popvault_encrypt=yes user
        per candidate key. Encryption counts as built only if the login
        works, RETR gives the plaintext back and the file on disk does
        not contain it."""
        cands = self.master_key_candidates(keydir)
        users = [User("enc%d" % i, fields={
            "popvault_encrypt": "yes", "popvault_master_key": path})
            for i, (_, path) in enumerate(cands)]
        reasons = []
        dc = Dovecot(users, debug=False, name="bench-probe")
        dc.start()
        try:
            self.dc = dc
            for i, (kind, path) in enumerate(cands):
                u = "enc%d" % i
                try:
                    self.client("pv-lmtp", "127.0.0.1", dc.ports["lmtp"], u,
                                1, 2000)
                    r = self.client("pv-pop3", "127.0.0.1", dc.ports["pop3"],
                                    u, dc.users[u].password, "retr")
                except RuntimeError as e:
                    reasons.append("login or delivery failed with the %s "
                                   "key: %s" % (kind,
                                                str(e).splitlines()[0][:160]))
                    continue
                if r.get("msgs") != "1":
                    reasons.append("%s key: message not delivered" % kind)
                    continue
                if self.stored_plaintext(u):
                    reasons.append("popvault_encrypt=yes accepted but mail "
                                   "is stored in plaintext (not built yet)")
                    break
                return True, "on (master key format: %s)" % kind, path
        finally:
            dc.stop()
            dc.cleanup()
            self.dc = None
        return False, "off: " + "; ".join(reasons), None

    def probe_sweep(self):
        rc, out, err = self.doveadm("popvault", "sweep", "-u", "popvault",
                                    check=False)
        if rc == 0:
            return True, "on"
        text = (out + err).strip()
        if "usage: doveadm" in text or "Unknown command" in text or rc == 64:
            return False, "n/a (not built)"
        return False, "n/a (error: %s)" % text.splitlines()[-1][:120]

    # --- server ---------------------------------------------------------

    def start(self):
        self.work = tempfile.mkdtemp(prefix="popvault-bench-")
        os.chmod(self.work, 0o755)
        priv, pub = self.make_keys(self.work)
        enc, enc_text, master = (False, "off (--no-encrypt)", None)
        if not self.args.no_encrypt:
            enc, enc_text, master = self.probe_encryption(self.work)
        self.features["popvault_encrypt"] = enc_text
        self.encrypting = enc
        # Every user has one userdb field, mail_plugins, and each plugin's
        # settings sit in plugin {}, inert for users that do not load it.
        # (popvault's settings as userdb fields made Dovecot's settings
        # parser compare each against all its setting names on every
        # delivery: 70 k instructions per LMTP message that plain and
        # mailcrypt did not pay, and that any other plugin's userdb
        # fields would cost just the same.)
        users = [User(name, fields={"mail_plugins": plugins})
                 for name, plugins in self.user_plugins()]
        # Dovecot 2.4 names mail_crypt's keys crypt_* (files, a filter
        # for the private key) and always writes version 2
        crypt_24 = ("crypt_global_public_key_file = %s\n"
                    "crypt_global_private_key main {\n"
                    "  crypt_private_key_file = %s\n}\n" % (pub, priv))
        plugin = harness.by_version({
            "mail_crypt_global_private_key": "<" + priv,
            "mail_crypt_global_public_key": "<" + pub,
            "mail_crypt_save_version": "2"}, {})
        plugin.update({
            "popvault_after_retr": "keep",
            "popvault_retain_downloaded": "14d",
            "popvault_uidl_ledger": "yes",
        })
        if enc:
            plugin.update({"popvault_encrypt": "yes",
                           "popvault_master_key": master})
        extra = "verbose_proctitle = yes\nmail_fsync = %s\n" % \
            self.args.mail_fsync + self.extra_conf() + \
            harness.by_version("", crypt_24)
        # popvault stays in the global mail_plugins so that doveadm
        # registers its commands; each user's userdb field overrides it.
        self.dc = Dovecot(users, userdb="sqlite", plugin=plugin,
                          extra_conf=extra, debug=False, name="bench")
        self.dc.start()
        self.features["mail_crypt"] = ("on (global EC prime256v1 key, "
                                       "mail_crypt_save_version=2)")
        pv = ["after_retr=keep", "retain_downloaded=14d", "uidl_ledger=yes"]
        if enc:
            pv.append("encrypt=yes")
        self.features["popvault_settings"] = " ".join(pv)
        sweep, self.features["popvault_sweep"] = self.probe_sweep()
        self.have_sweep = sweep

    def user_plugins(self):
        # a blank value: no plugin at all (empty would mean "yes")
        return [("plain", " "), ("mailcrypt", "mail_crypt"),
                ("popvault", "popvault")]

    def extra_conf(self):
        return ""

    def stop(self):
        if self.dc is not None:
            self.dc.stop()
            if self.args.out and os.path.exists(self.dc.log_path):
                shutil.copy(self.dc.log_path,
                            os.path.join(self.args.out, self.log_name()))
            self.dc.cleanup()
        if self.work:
            shutil.rmtree(self.work, ignore_errors=True)

    def log_name(self):
        return "dovecot.log"

    def pop3_pid(self, user, since):
        m = None
        # 2.4 says "Logged in:"
        for m in re.finditer(r"pop3-login: Info: (?:Login|Logged in): "
                             r"user=<%s>.*?"
                             r"mpid=(\d+)" % re.escape(user),
                             self.dc.log()[since:]):
            pass
        if m is None:
            raise RuntimeError("no pop3 login line for %s" % user)
        pid = int(m.group(1))
        with open("/proc/%d/comm" % pid) as f:
            if f.read().strip() != "pop3":
                raise RuntimeError("pid %d is not a pop3 process" % pid)
        return pid

    # --- workloads ------------------------------------------------------

    def reps(self):
        return range(self.size["reps"])

    def w_lmtp(self):
        s = self.size
        for rep in self.reps():
            for u in USERS:
                self.clear(u)
                r = self.client("pv-lmtp", "127.0.0.1", self.port("lmtp"), u,
                                s["lmtp_msgs"], s["lmtp_size"])
                self.samples["lmtp"][u].append(float(r["elapsed"]))

    def w_pop3_retr(self):
        s = self.size
        for u in USERS:
            self.clear(u)
            self.deliver(u, s["retr_msgs"], s["retr_size"])
            self.pop3_session(u, "retr")   # warm-up
        for rep in self.reps():
            for u in USERS:
                r = self.pop3_session(u, "retr")
                if int(r["msgs"]) != s["retr_msgs"]:
                    raise RuntimeError("%s: STAT says %s messages" % (
                        u, r["msgs"]))
                self.samples["pop3_retr"][u].append(float(r["elapsed"]))

    def w_imap_envelope(self):
        """The price of keeping headers out of dovecot.index.cache: plain
        and mail_crypt answer ENVELOPE from the cache after the warm-up,
        popvault decrypts the first chunk of every message each time."""
        s = self.size
        if not (self.args.only is None or "pop3_retr" in self.args.only):
            for u in USERS:
                self.clear(u)
                self.deliver(u, s["retr_msgs"], s["retr_size"])
        for rep in range(s["reps"] + 1):
            for u in USERS:
                c = imaplib.IMAP4("127.0.0.1", self.port("imap"))
                try:
                    c.login(u, self.password(u))
                    c.select("INBOX", readonly=True)
                    t = time.time()
                    typ, data = c.fetch("1:*", "(ENVELOPE)")
                    elapsed = time.time() - t
                finally:
                    c.logout()
                n = sum(1 for d in data if d and b"ENVELOPE" in (
                    d[0] if isinstance(d, tuple) else d))
                if typ != "OK" or n != s["retr_msgs"]:
                    raise RuntimeError("%s: FETCH ENVELOPE gave %s, %d "
                                       "messages" % (u, typ, n))
                if rep > 0:   # rep 0 is the warm-up that fills the cache
                    self.samples["imap_envelope"][u].append(elapsed)

    def pop3_session(self, u, mode, hold_cb=None):
        return self.client("pv-pop3", "127.0.0.1", self.port("pop3"), u,
                           self.password(u), mode,
                           *(["--hold"] if hold_cb else []), hold_cb=hold_cb)

    def w_pop3_big(self):
        s = self.size
        for u in USERS:
            self.clear(u)
            self.deliver(u, 1, s["big_size"])
            self.pop3_session(u, "retr")   # warm-up
        for rep in self.reps():
            for u in USERS:
                since = self.dc.log_size()
                rss = {}

                def hold():
                    pid = self.pop3_pid(u, since)
                    with open("/proc/%d/status" % pid) as f:
                        for line in f:
                            k, _, v = line.partition(":")
                            if k in ("VmHWM", "VmRSS"):
                                rss[k] = int(v.split()[0]) / 1024.0
                r = self.pop3_session(u, "retr", hold_cb=hold)
                self.samples["pop3_big"][u].append(float(r["elapsed"]))
                self.samples["pop3_big_rss"][u].append(rss["VmHWM"])

    def w_imap_partial(self):
        # the 100 MB message from w_pop3_big is still the only one
        s = self.size
        for rep in range(self.size["reps"] + 1):
            for u in USERS:
                r = self.client("pv-imap", "127.0.0.1", self.port("imap"), u,
                                self.password(u), "*", s["partial_off"],
                                s["partial_len"])
                if int(r["bytes"]) != s["partial_len"]:
                    raise RuntimeError("%s: partial fetch gave %s bytes" % (
                        u, r["bytes"]))
                if rep > 0:   # rep 0 is the warm-up
                    self.samples["imap_partial"][u].append(
                        float(r["fetch_elapsed"]))

    def w_webmail(self):
        """Each user's INBOX starts never used (home removed) and gets the
        same realistic messages over LMTP, one connection, as mail
        arrives; the home as delivery left it is kept aside. Each rep
        puts that copy back, then opens the folder twice: "first" is the
        first IMAP session after delivery (a new imap process, whatever
        delivery wrote into the index and cache), "warm" the next one."""
        s = self.size
        msgs, found = webmail.messages(s["webmail_msgs"], s["webmail_size"])
        snaps, answers = {}, {}
        for u in USERS:
            home = self.dc.home(u)
            shutil.rmtree(home, ignore_errors=True)
            c = self.dc.lmtp()
            c.sock.settimeout(self.args.timeout)
            try:
                for m in msgs:
                    r = c.deliver(u, m)[u]
                    if not r.startswith("250"):
                        raise RuntimeError("LMTP to %s: %s" % (u, r))
            finally:
                c.quit()
            snaps[u] = os.path.join(self.work, "webmail-" + u)
            subprocess.run(["cp", "-a", home, snaps[u]], check=True)
        for rep in self.reps():
            for u in USERS:
                home = self.dc.home(u)
                shutil.rmtree(home)
                subprocess.run(["cp", "-a", snaps[u], home], check=True)
                for phase in ("first", "warm"):
                    times, replies = webmail.open_folder(
                        self.port("imap"), u, self.password(u),
                        self.args.timeout)
                    for cmd, t in times.items():
                        self.samples["webmail_%s_%s" % (phase, cmd)][
                            u].append(t)
                    answers.setdefault(phase, {})[u] = webmail.normalized(
                        replies, s["webmail_msgs"], found)
                self.samples["webmail_cache_size"][u].append(
                    webmail.cache_size(home) / MiB)
            # every user must give plain's answers
            for phase, by_user in answers.items():
                for u in USERS[1:]:
                    for cmd, want in by_user["plain"].items():
                        if by_user[u][cmd] != want:
                            raise RuntimeError(
                                "webmail %s open: %s answers %s unlike "
                                "plain" % (phase, u, cmd))
        for u in USERS:
            shutil.rmtree(snaps[u])

    def make_mbox(self, path, count, size):
        body_line = b"x" * 76 + b"\n"
        with open(path, "wb") as f:
            for i in range(count):
                head = (b"From bench@popvault.test Sat Nov 21 10:00:00 2026\n"
                        b"From: bench <bench@popvault.test>\n"
                        b"To: user@popvault.test\n"
                        b"Subject: popvault bench message %d\n"
                        b"Date: Sat, 21 Nov 2026 10:00:00 +0000\n"
                        b"Message-ID: <mbox-%d@popvault.test>\n\n" % (i, i))
                nlines = max(1, (size - len(head)) // len(body_line))
                f.write(head + body_line * nlines + b"\n")

    def w_pop3_uidl(self):
        s = self.size
        src = os.path.join(self.work, "src")
        os.mkdir(src)
        os.chown(src, self.dc.mail_uid, self.dc.mail_gid)
        mbox = os.path.join(src, "inbox.mbox")
        self.make_mbox(mbox, s["mailbox_msgs"], s["mailbox_msg_size"])
        os.chmod(mbox, 0o644)
        # 2.4: driver:path, the rest as -p source options
        location = harness.by_version(
            ["mbox:%s:INBOX=%s:INDEX=MEMORY" % (src, mbox)],
            ["-p", "mail_inbox_path=" + mbox, "-p", "mail_index_path=MEMORY",
             "mbox:" + src])
        # doveadm import saves through each user's own mail_plugins, so
        # mail_crypt (and popvault encryption) encrypt as on delivery.
        # The three imports run in parallel: set-up time is not measured.
        procs = []
        for u in USERS:
            self.clear(u)
            procs.append((u, subprocess.Popen(
                [harness.DOVEADM, "-c", self.dc.config_path, "import",
                 "-u", u] + location + ["", "all"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
        t0 = time.time()
        for u, p in procs:
            out, err = p.communicate()
            if p.returncode != 0 or b"Error" in err:
                raise RuntimeError("doveadm import -u %s: %s" % (u, err))
        log("  imported %d messages into each INBOX in %.1f s" % (
            s["mailbox_msgs"], time.time() - t0))
        os.unlink(mbox)
        for u in USERS:
            r = self.pop3_session(u, "uidl")
            if int(r["msgs"]) != s["mailbox_msgs"]:
                raise RuntimeError("%s: STAT says %s messages" % (
                    u, r["msgs"]))
            self.samples["pop3_uidl_cold"][u].append(float(r["elapsed"]))
        for rep in self.reps():
            for u in USERS:
                r = self.pop3_session(u, "uidl")
                self.samples["pop3_uidl"][u].append(float(r["elapsed"]))

    def w_sweep(self):
        if not self.have_sweep:
            self.notes["sweep"] = self.features["popvault_sweep"]
            return
        for rep in self.reps():
            t = time.time()
            self.doveadm("popvault", "sweep", "-u", "popvault")
            self.samples["sweep"]["popvault"].append(time.time() - t)

    def check_encryption(self):
        """mail_crypt must really have stored ciphertext, plain must not."""
        for u, want in (("plain", True), ("mailcrypt", False)):
            got = self.stored_plaintext(u)
            if got is not None and got != want:
                raise RuntimeError("%s: stored plaintext=%s, expected %s" % (
                    u, got, want))
        got = self.stored_plaintext("popvault")
        self.features["popvault_stored"] = (
            "plaintext" if got else "ciphertext")

    def run(self):
        steps = [("lmtp", self.w_lmtp), ("pop3_retr", self.w_pop3_retr),
                 ("imap_envelope", self.w_imap_envelope),
                 ("pop3_big", self.w_pop3_big),
                 ("imap_partial", self.w_imap_partial),
                 ("webmail", self.w_webmail),
                 ("pop3_uidl", self.w_pop3_uidl), ("sweep", self.w_sweep)]
        for name, fn in steps:
            if self.args.only and name not in self.args.only:
                continue
            t = time.time()
            log("workload %s ..." % name)
            fn()
            if name == "lmtp":
                self.check_encryption()
            log("  done in %.1f s" % (time.time() - t))


class CallgrindBench(Bench):
    """pop3 and lmtp under valgrind --tool=callgrind: instruction counts
    for the pipelined download and for delivery, plain vs popvault.
    Wall clock on a shared VM spreads by a factor of two between
    repetitions (LMTP: fsync); instruction counts repeat to ~0.3 %."""

    # messages delivered in the short and the long LMTP connection: the
    # difference, divided by LMTP_EXTRA, is the cost of one message,
    # without process start, plugin and OpenSSL set-up and the first
    # message's key work
    LMTP_FIRST = 20

    def wrapper(self, service):
        # valgrind creates its output file as root before the process
        # drops privileges and reopens it as the mail user at exit:
        # create it first, writable, under the pid that exec keeps.
        # While the file "uncounted" exists, a new process runs without
        # valgrind: the set-up delivery of the pop3 count's messages
        # (LMTP under callgrind is ~50 times slower).
        path = os.path.join(self.work, "%s-callgrind.sh" % service)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n"
                    "[ -e %s/uncounted ] && exec /usr/lib/dovecot/%s \"$@\"\n"
                    "f=%s/callgrind.%s.$$\n"
                    ": > \"$f\" && chmod 666 \"$f\"\n"
                    "exec valgrind --tool=callgrind -q --vgdb=no "
                    "--callgrind-out-file=\"$f\" /usr/lib/dovecot/%s \"$@\"\n"
                    % (self.work, service, self.cgdir, service, service))
        os.chmod(path, 0o755)
        return path

    def extra_conf(self):
        self.cgdir = os.path.join(self.work, "callgrind")
        os.mkdir(self.cgdir)
        os.chmod(self.cgdir, 0o1777)
        # one lmtp process per connection: it exits, and so writes its
        # profile, when the client disconnects
        return ("service pop3 {\n  executable = %s\n}\n"
                "service lmtp {\n  executable = %s\n"
                "  %s = 1\n}\n" % (self.wrapper("pop3"), self.wrapper("lmtp"),
                                    harness.by_version(
                                        "service_count",
                                        "restart_request_count")))

    def wait_totals(self, path):
        """The Ir total of a finished profile: "summary:" comes first in
        the file, "totals:" last, once the process has exited."""
        deadline = time.time() + 120
        while time.time() < deadline:
            with open(path, errors="replace") as f:
                m = re.search(r"^totals: (\d+)", f.read(), re.M)
            if m:
                return int(m.group(1))
            time.sleep(0.2)
        raise RuntimeError("no callgrind totals in %s" % path)

    def user_plugins(self):
        # two more users of each kind that only the LMTP count delivers
        # to: a mailbox's history (transaction log) makes opening it
        # costlier, so each count starts from a mailbox never used
        users = Bench.user_plugins(self)
        return users + [("%s%s" % (name, tag), plugins)
                        for name, plugins in users for tag in ("l1", "l2")]

    def lmtp_instructions(self, user, count, keep_as=None):
        """Instructions of the lmtp process that delivers count messages
        to the never used INBOX of user over one connection."""
        before = set(os.listdir(self.cgdir))
        self.client("pv-lmtp", "127.0.0.1", self.port("lmtp"), user, count,
                    self.size["lmtp_size"])
        deadline = time.time() + 60
        while True:
            new = [f for f in os.listdir(self.cgdir)
                   if f.startswith("callgrind.lmtp.") and f not in before]
            if new or time.time() > deadline:
                break
            time.sleep(0.2)
        if len(new) != 1:
            raise RuntimeError("expected one new lmtp profile, got %s" % new)
        path = os.path.join(self.cgdir, new[0])
        total = self.wait_totals(path)
        if keep_as is not None:
            shutil.copy(path, os.path.join(self.args.out, keep_as))
        return total

    def lmtp_run(self, users):
        s = self.size
        extra = s["lmtp_msgs"] // 5
        self.cg_lmtp = {}
        for u in users:
            short = self.lmtp_instructions(u + "l1", self.LMTP_FIRST)
            long_ = self.lmtp_instructions(
                u + "l2", self.LMTP_FIRST + extra,
                keep_as="callgrind.lmtp.%s.out" % u)
            self.cg_lmtp[u] = {
                "messages": extra, "short_Ir": short, "long_Ir": long_,
                "per_message_Ir": (long_ - short) / extra}
            log("  callgrind lmtp %s: %.0f Ir per message" % (
                u, self.cg_lmtp[u]["per_message_Ir"]))

    def log_name(self):
        return "dovecot-callgrind.log"

    def instructions(self, since):
        pid = None
        for m in re.finditer(r"pop3-login: Info: (?:Login|Logged in): "
                             r"user=<(\w+)>.*?mpid=(\d+)",
                             self.dc.log()[since:]):
            pid = int(m.group(2))
        path = os.path.join(self.cgdir, "callgrind.pop3.%d" % pid)
        self.cg_path = path
        return self.wait_totals(path)

    def keep_profile(self, user):
        """Copy the download's profile into the results for
        callgrind_annotate (the work dir goes)."""
        shutil.copy(self.cg_path, os.path.join(
            self.args.out, "callgrind.pop3.%s.out" % user))

    def run(self):
        s = self.size
        self.cg = {}
        users = ("plain", "popvault") + (("mailcrypt",)
                                         if self.args.callgrind_mailcrypt
                                         else ())
        only = self.args.only or ["pop3_retr", "lmtp"]
        self.cg_lmtp = {}
        uncounted = os.path.join(self.work, "uncounted")
        for u in users if "pop3_retr" in only else ():
            self.clear(u)
            open(uncounted, "w").close()
            try:
                self.deliver(u, s["retr_msgs"], s["retr_size"])
            finally:
                os.unlink(uncounted)
            # the first session after delivery syncs the maildir (new/
            # to cur/, index records): uncounted, so that the base below
            # is the same login+STAT+QUIT the download session pays
            open(uncounted, "w").close()
            try:
                self.pop3_session(u, "stat")
            finally:
                os.unlink(uncounted)
            since = self.dc.log_size()
            self.pop3_session(u, "stat")
            base = self.instructions(since)
            since = self.dc.log_size()
            self.pop3_session(u, "retr")
            total = self.instructions(since)
            self.cg[u] = {"session_Ir": total, "login_stat_quit_Ir": base,
                          "per_message_Ir": (total - base) / s["retr_msgs"]}
            log("  callgrind %s: %d Ir (login+STAT+QUIT alone %d)" % (
                u, total, base))
            self.keep_profile(u)
        if "lmtp" in only:
            self.lmtp_run(users)


class GrowthBench(Bench):
    """Delivery into grown mailboxes (issue 18 goal 4), plain against
    encrypting popvault, on a server of its own: for each size N (0,
    grow_mid, grow_large) both users get a mailbox of N messages made
    the same way, then grow_msgs x grow_size are delivered over one LMTP
    connection (wall time, --reps runs, the mailbox put back before
    each), and lmtp's instructions per message are counted under
    callgrind.

    Seeding by LMTP takes hours at 100,000 messages. Instead each user
    gets one message over LMTP and opens the mailbox once (a POP3
    session), and that message's file is hard linked N times into cur/
    under names of the shape a delivery gives (base name, ,S= and ,W=
    sizes, no G field since popvault names encrypted files like plain
    ones); one doveadm force-resync then adds them to the
    dovecot-uidlist, index and log, and writes dovecot.index with the
    extensions the delivery and the session added (plain's cache,
    popvault's retention), as a mailbox that has had mail keeps them.
    Both users' mailboxes then hold uidlists of the same size and logs
    of the same records: seeded by LMTP, which user's log had just
    rotated would depend on N and on the bytes each delivery logs, and
    the rows would measure that phase (docs/performance.md, "Delivery
    into a grown mailbox"). Old messages are never opened by a
    delivery: one file hard linked N times stores what N deliveries
    would."""

    LEVELS = ("0", "grow_mid", "grow_large")
    # callgrind: the instructions of a connection of CG_FIRST messages
    # are subtracted from one of CG_FIRST + grow_cg_msgs: process start,
    # plugin and key set-up cancel out
    CG_FIRST = 3

    def user_plugins(self):
        return [("plain", " "), ("popvault", "popvault")]

    def extra_conf(self):
        # lmtp runs under callgrind while the file "callgrind-on" exists
        # (see CallgrindBench.wrapper); one process per connection, so
        # that it exits, and writes its profile, when the client is done
        self.cgdir = os.path.join(self.work, "callgrind")
        os.mkdir(self.cgdir)
        os.chmod(self.cgdir, 0o1777)
        path = os.path.join(self.work, "lmtp-wrapper.sh")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n"
                    "[ -e %s/callgrind-on ] || exec /usr/lib/dovecot/lmtp \"$@\"\n"
                    "f=%s/callgrind.lmtp.$$\n"
                    ": > \"$f\" && chmod 666 \"$f\"\n"
                    "exec valgrind --tool=callgrind -q --vgdb=no "
                    "--callgrind-out-file=\"$f\" /usr/lib/dovecot/lmtp "
                    "\"$@\"\n" % (self.work, self.cgdir))
        os.chmod(path, 0o755)
        return ("service lmtp {\n  executable = %s\n  %s = 1\n}\n" % (
            path, harness.by_version("service_count",
                                     "restart_request_count")))

    def log_name(self):
        return "dovecot-growth.log"

    def seed(self, user, n):
        """The user's home with an INBOX of n + 1 messages (see the
        class)."""
        s = self.size
        home = self.dc.home(user)
        shutil.rmtree(home, ignore_errors=True)
        self.client("pv-lmtp", "127.0.0.1", self.port("lmtp"), user, 1,
                    s["grow_size"])
        # the user has opened the mailbox: popvault's first POP3 session
        # adds its retention extension to the index
        since = self.dc.log_size()
        self.pop3_session(user, "stat")
        # the pop3 process goes on after QUIT (popvault's session sweep,
        # autoexpunge): the files are touched once it has exited
        m = None
        for m in re.finditer(r"pop3-login: Info: (?:Login|Logged in): "
                             r"user=<%s>.*?mpid=(\d+)" % user,
                             self.dc.log()[since:]):
            pass
        deadline = time.time() + 120
        while m and os.path.exists("/proc/" + m.group(1)) and \
                time.time() < deadline:
            time.sleep(0.1)
        md = os.path.join(home, "Maildir")
        src, = [os.path.join(md, "cur", f)
                for f in os.listdir(os.path.join(md, "cur"))]
        sizes = re.search(r",S=\d+,W=\d+", src).group(0)
        t0 = int(time.time()) - 86400 * 365
        srcs = [src]
        # Names as deliveries give them: a second's worth of mail shares
        # the time, microseconds and lmtp PIDs vary. Drawn from a
        # generator seeded with n, so that both users, and every run,
        # get the same names. (Seeded with 100 distinct microsecond
        # values and consecutive PIDs, the names fell into few of the
        # uidlist hash table's chains: maildir_filename_base_cmp() took
        # half of a delivery at 100,000 messages, and the rows moved
        # between 0.91x and 1.41x from run to run with which chain the
        # new message's name hit.)
        rng = random.Random(n)
        names = set()
        for i in range(n):
            if i and i % 50000 == 0:
                # a file takes at most 65,000 links (ext4)
                srcs.append(src + ".%d" % i)
                shutil.copy2(src, srcs[-1])
                os.chown(srcs[-1], self.dc.mail_uid, self.dc.mail_gid)
            while True:
                name = "%d.M%dP%d.seed%s:2," % (
                    t0 + i // 100, rng.randrange(1000000),
                    rng.randrange(300, 4194304), sizes)
                if name not in names:
                    break
            names.add(name)
            # as a delivery names it, moved to cur/ by a POP3 session
            os.link(srcs[-1], os.path.join(md, "cur", name))
        # The delivered message stays, and the mailbox's files as its
        # delivery and the POP3 session left them: their extensions
        # (plain's cache, 4 bytes per index record; popvault's
        # retention) go into dovecot.index with the N messages, where a
        # mailbox that has had mail and sessions keeps them. (Started
        # without them, every measured delivery replayed the extension's
        # introduction from the log over all N records: 2.2 M
        # instructions per delivery at 10,000.)
        for f in srcs[1:]:
            os.unlink(f)
        self.doveadm("force-resync", "-u", user, "INBOX")
        return home

    def cg_instructions(self, user, count, keep_as=None):
        before = set(os.listdir(self.cgdir))
        flag = os.path.join(self.work, "callgrind-on")
        open(flag, "w").close()
        try:
            self.client("pv-lmtp", "127.0.0.1", self.port("lmtp"), user,
                        count, self.size["grow_size"])
        finally:
            os.unlink(flag)
        deadline = time.time() + 120
        while True:
            new = [f for f in os.listdir(self.cgdir) if f not in before]
            if new or time.time() > deadline:
                break
            time.sleep(0.2)
        if len(new) != 1:
            raise RuntimeError("expected one new lmtp profile, got %s" % new)
        path = os.path.join(self.cgdir, new[0])
        total = CallgrindBench.wait_totals(self, path)
        if keep_as is not None:
            shutil.copy(path, os.path.join(self.args.out, keep_as))
        return total

    def restore(self, user, snap):
        home = self.dc.home(user)
        shutil.rmtree(home)
        subprocess.run(["cp", "-a", snap, home], check=True)

    def run(self):
        s = self.size
        users = ("plain", "popvault")
        shape = {}
        for lvl in self.LEVELS:
            n = 0 if lvl == "0" else s[lvl]
            wid = "lmtp_into_%s" % lvl
            large = lvl == "grow_large"
            msgs = s["grow_large_msgs" if large else "grow_msgs"]
            cg_first = 1 if large else self.CG_FIRST
            cg_msgs = s["grow_large_cg_msgs" if large else "grow_cg_msgs"]
            snaps = {}
            t = time.time()
            for u in users:
                home = self.seed(u, n)
                snaps[u] = os.path.join(self.work, "snap-" + u)
                shutil.rmtree(snaps[u], ignore_errors=True)
                subprocess.run(["cp", "-a", home, snaps[u]], check=True)
                md = os.path.join(home, "Maildir")
                shape[u] = {f: os.path.getsize(os.path.join(md, f))
                            if os.path.exists(os.path.join(md, f)) else 0
                            for f in ("dovecot-uidlist", "dovecot.index",
                                      "dovecot.index.log")}
            log("  seeded %d messages per user in %.0f s: %s" % (
                n, time.time() - t, shape))
            self.notes.setdefault("grow_shape", {})[n] = shape.copy()
            for rep in self.reps():
                for u in users:
                    self.restore(u, snaps[u])
                    r = self.client("pv-lmtp", "127.0.0.1", self.port("lmtp"),
                                    u, msgs, s["grow_size"])
                    self.samples[wid][u].append(float(r["elapsed"]))
            if not self.args.no_growth_callgrind and \
                    shutil.which("valgrind") is not None:
                for u in users:
                    self.restore(u, snaps[u])
                    short = self.cg_instructions(u, cg_first)
                    self.restore(u, snaps[u])
                    long_ = self.cg_instructions(
                        u, cg_first + cg_msgs,
                        keep_as="callgrind.lmtp-into-%d.%s.out" % (n, u))
                    self.samples[wid + "_ir"][u].append(
                        (long_ - short) / cg_msgs / 1e6)
            for u in users:
                shutil.rmtree(snaps[u])
            log("  %d: %s" % (n, {u: self.samples[wid][u] +
                                  self.samples[wid + "_ir"][u]
                                  for u in users}))


# --- reporting -------------------------------------------------------------

def summarize(samples):
    if not samples:
        return None
    return {"samples": samples, "median": statistics.median(samples),
            "min": min(samples), "max": max(samples)}


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "MiB":
        return "%.1f" % v
    if v >= 100:
        return "%.0f" % v
    if v >= 1:
        return "%.2f" % v
    if v >= 0.01:
        return "%.3f" % v
    return "%.4f" % v


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    dv = subprocess.run([harness.DOVECOT, "--version"], capture_output=True,
                        text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": model, "mem_mib": mem,
            "kernel": platform.release(), "dovecot": dv}


def callgrind_lines(title, counts, columns, workload):
    """One callgrind section of table.txt: a row per user, then
    popvault/plain per message against the workload's target."""
    lines = ["", title]
    for u, v in counts.items():
        lines.append("  %-10s " % u + "   ".join(
            "%s %14d" % (label, v[key]) for label, key in columns) +
            "   per message %10.0f" % v["per_message_Ir"])
    if "plain" in counts and "popvault" in counts:
        limit = next(w[3][1] for w in WORKLOADS if w[0] == workload)
        r = (counts["popvault"]["per_message_Ir"] /
             counts["plain"]["per_message_Ir"])
        lines.append("  popvault/plain: per message %.3fx   target <= %gx "
                     "plain: %s" % (r, limit,
                                    "met" if r <= limit else "NOT met"))
    return lines


def report(bench, cg, cg_lmtp, out, elapsed):
    s = bench.size
    names = dict(s)
    names.update({k + "_h": human(s[k]) for k in
                  ("lmtp_size", "retr_size", "big_size",
                   "webmail_size", "grow_size")})
    names["partial_off_h"] = human(s["partial_off"])
    rows = []
    for wid, title, unit, target, target_text in WORKLOADS:
        res = {u: summarize(bench.samples[wid][u]) for u in USERS}
        if wid.startswith("lmtp_into_") and not any(res.values()):
            continue   # --growth not asked for
        ratios = {}
        for u in ("mailcrypt", "popvault"):
            if res[u] and res["plain"] and res["plain"]["median"] > 0:
                ratios[u] = res[u]["median"] / res["plain"]["median"]
            else:
                ratios[u] = None
        verdict = "n/a"
        pv = res["popvault"]
        if target and pv:
            kind, limit = target
            if kind == "ratio" and ratios["popvault"] is not None:
                ok = ratios["popvault"] <= limit
            elif kind == "plus" and res["plain"]:
                ok = pv["median"] - res["plain"]["median"] <= limit
            elif kind == "abs":
                ok = pv["median"] <= limit
            else:
                ok = None
            verdict = {True: "met", False: "NOT met", None: "n/a"}[ok]
            if ok is not None and kind != "abs" and not bench.encrypting:
                # the targets are for encrypted popvault
                verdict += " (enc off)"
        rows.append({"id": wid, "title": title.format(**names), "unit": unit,
                     "target": target_text, "verdict": verdict,
                     "note": bench.notes.get(wid), "results": res,
                     "ratios": ratios})

    def cell(r, u):
        x = r["results"][u]
        if x is None:
            return r["note"] if (r["note"] and u == "popvault") else "n/a"
        if len(x["samples"]) == 1:
            return fmt(x["median"], r["unit"])
        return "%s [%s-%s]" % (fmt(x["median"], r["unit"]),
                               fmt(x["min"], r["unit"]),
                               fmt(x["max"], r["unit"]))

    def ratio(v):
        return "n/a" if v is None else "%.2fx" % v

    head = ["workload", "unit", "plain", "mailcrypt", "popvault",
            "mc/plain", "pv/plain", "target (popvault)", "verdict"]
    table = [head] + [[r["title"], r["unit"], cell(r, "plain"),
                       cell(r, "mailcrypt"), cell(r, "popvault"),
                       ratio(r["ratios"]["mailcrypt"]),
                       ratio(r["ratios"]["popvault"]), r["target"],
                       r["verdict"]] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = []
    m = machine()
    lines.append("popvault benchmark, %s, %s mode, %d reps, %.0f s" % (
        time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick" if bench.quick else "full", s["reps"], elapsed))
    lines.append("machine: %d cores, %s, %d MiB RAM, Linux %s, Dovecot %s" % (
        m["nproc"], m["cpu"], m["mem_mib"], m["kernel"], m["dovecot"]))
    for k, v in bench.features.items():
        lines.append("feature %-18s %s" % (k + ":", v))
    lines.append("values: median [min-max] over reps; mail_fsync=%s" %
                 bench.args.mail_fsync)
    lines.append("")
    for i, row in enumerate(table):
        lines.append("  ".join(c.ljust(widths[j]) if j < 2 else
                               c.rjust(widths[j]) if j < 7 else
                               c.ljust(widths[j])
                               for j, c in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if cg:
        lines += callgrind_lines(
            "callgrind, pop3 process, RETR %d x %s pipelined (instructions, "
            "Ir):" % (s["retr_msgs"], human(s["retr_size"])), cg,
            (("session", "session_Ir"),
             ("login+STAT+QUIT", "login_stat_quit_Ir")), "pop3_retr")
    if cg_lmtp:
        extra = next(iter(cg_lmtp.values()))["messages"]
        lines += callgrind_lines(
            "callgrind, lmtp process, delivery of %d x %s over one "
            "connection (instructions, Ir; %d more messages than a "
            "%d-message connection):" % (
                extra + CallgrindBench.LMTP_FIRST, human(s["lmtp_size"]),
                extra, CallgrindBench.LMTP_FIRST), cg_lmtp,
            (("connection", "long_Ir"), ("short connection", "short_Ir")),
            "lmtp")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.txt"), "w") as f:
        f.write(text)
    data = {"mode": "quick" if bench.quick else "full", "sizes": s,
            "machine": m, "features": bench.features,
            "mail_fsync": bench.args.mail_fsync, "users": list(USERS),
            "elapsed_s": elapsed, "workloads": rows, "callgrind": cg,
            "callgrind_lmtp": cg_lmtp}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(data, f, indent=2)
    chart(rows, out, "popvault encryption %s" % (
        "on" if bench.encrypting else "off"))
    return text


def chart(rows, out, subtitle):
    dat = os.path.join(out, "ratios.dat")
    with open(dat, "w") as f:
        f.write("# workload mailcrypt/plain popvault/plain\n")
        n = 0
        for r in rows:
            mc, pv = r["ratios"]["mailcrypt"], r["ratios"]["popvault"]
            if mc is None and pv is None:
                continue
            label = r["id"].replace("_", "-")
            f.write('"%s" %s %s\n' % (label,
                                      "%.4f" % mc if mc else "NaN",
                                      "%.4f" % pv if pv else "NaN"))
            n += 1
    gp = os.path.join(out, "ratios.gp")
    with open(gp, "w") as f:
        f.write("""set terminal pngcairo size 1000,560 noenhanced
set output '%s'
set title "time (RSS) relative to plain Dovecot, median; lower is better\\n%s"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y 2
set yrange [0.25:*]
set ylabel 'ratio to plain (log scale)'
set xtics rotate by -25
set grid ytics
set key top left
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2
plot '%s' using 2:xtic(1) title 'mail_crypt / plain', \\
     '' using 3 title 'popvault / plain'
""" % (os.path.join(out, "ratios.png"), subtitle, dat))
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None:
        log("note: gnuplot not found (apt-get install gnuplot-nox); "
            "no ratios.png")
        return
    p = subprocess.run([gnuplot, gp], capture_output=True, text=True)
    if p.returncode != 0:
        # pngcairo is in gnuplot-nox; fall back to the plain png terminal
        subprocess.run(["sed", "-i", "s/pngcairo/png/", gp])
        p = subprocess.run([gnuplot, gp], capture_output=True, text=True)
    if p.returncode != 0:
        log("note: gnuplot failed, no ratios.png: %s" % p.stderr.strip())
        if os.path.exists(os.path.join(out, "ratios.png")):
            os.unlink(os.path.join(out, "ratios.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(TOP, "build"))
    ap.add_argument("--bin-dir", help="where pv-pop3 etc. are "
                    "(default BUILD_DIR/bench)")
    ap.add_argument("--out", help="results directory (default "
                    "BUILD_DIR/bench-results/<timestamp>)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and 2 reps: a smoke run, seconds")
    ap.add_argument("--callgrind", action="store_true",
                    help="also count pop3 instructions under callgrind "
                    "(second server, slow)")
    ap.add_argument("--callgrind-only", action="store_true")
    ap.add_argument("--callgrind-mailcrypt", action="store_true",
                    help="include mailcrypt in the callgrind run (slow)")
    ap.add_argument("--only", action="append",
                    choices=["lmtp", "pop3_retr", "imap_envelope", "pop3_big",
                             "imap_partial", "webmail", "pop3_uidl",
                             "sweep", "growth"])
    ap.add_argument("--growth", action="store_true",
                    help="also LMTP delivery into mailboxes of 0, 10,000 "
                    "and 100,000 messages, wall time and callgrind (a "
                    "server of its own; about 7 min on a busy 2-core "
                    "machine, --quick 2 min)")
    ap.add_argument("--no-growth-callgrind", action="store_true",
                    help="--growth without the callgrind counts")
    ap.add_argument("--no-encrypt", action="store_true",
                    help="do not probe or use popvault_encrypt")
    ap.add_argument("--master-key", help="popvault_master_key file to use "
                    "instead of probing key formats")
    ap.add_argument("--mail-fsync", default="optimized",
                    choices=["optimized", "always", "never"])
    ap.add_argument("--timeout", type=float, default=1800)
    for k in SIZES:
        ap.add_argument("--" + k.replace("_", "-"), type=int, dest=k)
    ap.add_argument("--partial-offset", type=int)
    args = ap.parse_args()

    args.build_dir = os.path.abspath(args.build_dir)
    args.bin_dir = os.path.abspath(args.bin_dir or
                                   os.path.join(args.build_dir, "bench"))
    harness.BUILD_DIR = args.build_dir
    os.environ["POPVAULT_BUILD_DIR"] = args.build_dir
    for prog in ("pv-pop3", "pv-lmtp", "pv-imap"):
        if not os.access(os.path.join(args.bin_dir, prog), os.X_OK):
            sys.exit("bench: %s/%s missing: make -C bench O=%s" % (
                args.bin_dir, prog, args.bin_dir))
    if os.getuid() != 0:
        sys.exit("bench: run as root (Dovecot's mail processes need it)")
    args.out = os.path.abspath(args.out or os.path.join(
        args.build_dir, "bench-results", time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(args.out, exist_ok=True)

    start = time.time()
    bench = Bench(args)
    log("results in %s" % args.out)
    if not args.callgrind_only:
        try:
            bench.start()
            for k, v in bench.features.items():
                log("feature %s: %s" % (k, v))
            bench.run()
        finally:
            bench.stop()
    else:
        bench.features["note"] = "callgrind only"
    if args.growth or (args.only and "growth" in args.only):
        log("growth: LMTP delivery into grown mailboxes ...")
        gb = GrowthBench(args)
        try:
            gb.start()
            gb.run()
        finally:
            gb.stop()
        for wid, by_user in gb.samples.items():
            if wid.startswith("lmtp_into_"):
                bench.samples[wid] = by_user
        bench.features["growth_seed_files"] = json.dumps(
            gb.notes.get("grow_shape"), sort_keys=True)
    cg = cg_lmtp = None
    if args.callgrind or args.callgrind_only:
        if shutil.which("valgrind") is None:
            log("note: valgrind not installed, no callgrind counts")
        else:
            log("callgrind: pop3 and lmtp under valgrind (slow) ...")
            cgb = CallgrindBench(args)
            try:
                cgb.start()
                cgb.run()
                cg = cgb.cg
                cg_lmtp = cgb.cg_lmtp
            finally:
                cgb.stop()
    text = report(bench, cg, cg_lmtp, args.out, time.time() - start)
    print()
    print(text)
    latest = os.path.join(os.path.dirname(args.out), "latest")
    if os.path.islink(latest) or not os.path.exists(latest):
        if os.path.islink(latest):
            os.unlink(latest)
        os.symlink(os.path.basename(args.out), latest)
    log("wrote %s in %s" % (", ".join(sorted(
        f for f in os.listdir(args.out)
        if f.endswith((".txt", ".json", ".png")))), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

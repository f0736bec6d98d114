#!/usr/bin/env python3
"""popvault demo: a private Dovecot on 127.0.0.1 with one user per policy."""

import argparse
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
from harness import Dovecot, User, make_message  # noqa: E402

DEMO_USERS = [
    ("plain", {}, "no popvault settings: Dovecot's normal behaviour"),
    ("keep", {"popvault_after_retr": "keep"}, "downloaded mail stays"),
    ("delete", {"popvault_after_retr": "delete"},
     "downloaded mail is deleted at QUIT, even without DELE"),
    ("hide", {"popvault_after_retr": "hide"},
     "downloaded mail disappears from POP3, stays for IMAP"),
    ("archive", {"popvault_after_retr": "move:Archive"},
     "downloaded mail moves to Archive"),
    ("trash", {"popvault_on_dele": "move:Trash"}, "DELE moves to Trash"),
    ("hold", {"popvault_on_dele": "keep"}, "DELE removes nothing (legal hold)"),
    ("recent", {"popvault_list_window": "30d"},
     "only mail from the last 30 days is listed"),
    ("retain", {"popvault_retain_downloaded": "14d",
                "popvault_retain_unread": "90d"},
     "downloaded mail kept 14 days, unread 90 days"),
]
# Encryption at rest (docs/encryption.md). "<MASTER>" becomes the path of a
# master key made for the demo.
ENCRYPT_USERS = [
    ("vault", {"popvault_encrypt": "yes", "popvault_master_key": "<MASTER>"},
     "stored encrypted; the provider's master key opens the user's keys"),
    ("locked", {"popvault_encrypt": "yes"},
     "stored encrypted; keys locked with the login password (made at the "
     "first login)"),
]
# password mode: the passdb hands the login password over (README)
PASSDB_FIELDS = {"locked": {"userdb_popvault_key_password": "%w"}}


def make_master_key():
    """A demo master key in a directory of its own (the mail uid must
    read it, nobody else)."""
    keydir = tempfile.mkdtemp(prefix="popvault-demo-key-")
    os.chmod(keydir, 0o755)
    path = os.path.join(keydir, "master.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return keydir, path


def port_or_free(preferred):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return harness.free_port()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--seconds", type=float, default=0,
                    help="stop after this long (default: until Ctrl-C)")
    args = ap.parse_args()
    harness.BUILD_DIR = os.path.abspath(args.build_dir)

    keydir, master = make_master_key()
    all_users = DEMO_USERS + ENCRYPT_USERS
    users = [User(name, password="demo",
                  fields={k: v.replace("<MASTER>", master)
                          for k, v in fields.items()},
                  passdb_fields=PASSDB_FIELDS.get(name))
             for name, fields, _ in all_users]
    ports = {"pop3": port_or_free(11110), "imap": port_or_free(11143),
             "lmtp": port_or_free(11024)}
    dc = Dovecot(users, name="demo", ports=ports, debug=False)
    dc.start()
    try:
        os.chown(master, dc.mail_uid, dc.mail_gid)
        # password mode: the first login makes the key pair; until then
        # delivery answers 451 (the MTA would retry)
        dc.pop3("locked").quit()
        for name, _, _ in all_users:
            dc.deliver_many(name, [
                make_message("Welcome to popvault (%s)" % name,
                             body="This is sample message %d for %s.\r\n"
                                  % (n, name), to="%s@popvault.test" % name)
                for n in range(1, 4)])
        print("popvault demo: Dovecot %d.%d running from %s" %
              (harness.DOVECOT_VERSION + (dc.tmp,)))
        print("  POP3  127.0.0.1:%d   IMAP 127.0.0.1:%d   LMTP 127.0.0.1:%d"
              % (ports["pop3"], ports["imap"], ports["lmtp"]))
        print("  users (password 'demo'), each with 3 sample messages:")
        for name, fields, what in all_users:
            print("    %-8s %s" % (name, what))
        maildirs = " ".join(os.path.join(dc.home(n), "Maildir")
                            for n in ("plain", "vault", "locked"))
        print("  encryption at rest: the text is in plain's files only; "
              "vault's and locked's")
        print("  start with the PVLT magic (ciphertext from the first byte):")
        print("        grep -rl 'sample message' %s" % maildirs)
        print("        LC_ALL=C grep -rlaP '^\\x89PVLT' %s" % maildirs)
        print("  try:  curl -s pop3://%s:demo@127.0.0.1:%d/       (list)"
              % ("delete", ports["pop3"]))
        print("        curl -s pop3://%s:demo@127.0.0.1:%d/1      (RETR 1)"
              % ("delete", ports["pop3"]))
        print("        doveadm -c %s popvault status -A" % dc.config_path)
        print("  log:  %s" % dc.log_path)
        print("  Ctrl-C stops the demo and removes its directory.")
        sys.stdout.flush()
        if args.seconds:
            time.sleep(args.seconds)
        else:
            while True:
                signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        dc.stop()
        dc.cleanup()
        shutil.rmtree(keydir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    # SIGTERM ends the demo like Ctrl-C. (Blocking the signals instead
    # would be inherited by the dovecot master, which then ignores them.)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())

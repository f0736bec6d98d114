#!/usr/bin/env python3
"""Phase 1 of the upgrade test: Dovecot 2.3 writes a provider's mail root
and records what every user and the admin see of it.

    phase1.py --build-dir build --mail-root DIR

DIR must not exist; it gets home/ (the users' homes), keys/master.key and
upgrade-23.json (the inventory and the recovery keys). Exits non-zero
when 2.3 itself does not read back what it stored.
"""

import argparse
import json
import os
import re
import secrets
import sys

import upgrade_state as us

# a received date in the past, set with IMAP APPEND: the retain_unread
# clock then runs from it
OLD_DATE = "02-Nov-2026 08:15:00 +0000"


def messages(harness, user):
    """What each user gets: short and 8-bit mail, dot-stuffing, a long
    line, a message of four 64 KiB chunks, one without a body."""
    mk = harness.make_message
    big = "".join("%s line %05d of the big one\r\n" % (user, i)
                  for i in range(7000)).encode()
    return [
        mk("%s short" % user, body="Hello %s.\r\n" % user),
        mk("%s 8bit" % user, body="Gr\u00fc\u00dfe, \u00e9t\u00e9 \u2603\r\n"
           ".leading dot\r\n..two dots\r\n.\r\n" + "x" * 3000 + "\r\n",
           extra_headers=["Content-Type: text/plain; charset=utf-8",
                          "Content-Transfer-Encoding: 8bit"]),
        mk("%s big" % user, body=big),
        mk("%s for the ledger" % user, msgid="<import-%s@old.example>" % user,
           body="imported UIDL\r\n"),
        mk("%s headers only" % user, body=""),
    ]


def pop3_session(dc, user, retr=(), dele=()):
    """Downloads and deletes, ended with QUIT: the policies run."""
    p = dc.pop3(user)
    for n in retr:
        p.retr(n)
    for n in dele:
        r = p.command("DELE %d" % n)
        assert r.startswith("+OK"), r
    r = p.quit()
    assert r.startswith("+OK"), r


def damage_later_chunk(dc, user):
    """Flips one byte in the last chunk of the user's big message (a
    maildir file), then downloads it: the reply breaks off mid-message and
    popvault marks the message $PopvaultDamaged for later sessions."""
    from crypt_util import MAGIC, message_files
    big = max(message_files(dc, user), key=os.path.getsize)
    with open(big, "r+b") as f:
        assert f.read(len(MAGIC)) == MAGIC, big
        size = os.path.getsize(big)
        # maildir stores LF line ends: four chunks of 64 KiB, not five
        assert size > 3 * 65536, size
        f.seek(size - 100)
        b = f.read(1)
        f.seek(size - 100)
        f.write(bytes([b[0] ^ 0x01]))
    p = dc.pop3(user)
    try:
        _, listing = p.multi("LIST")
        sizes = [int(l.split()[1]) for l in listing]
        n = sizes.index(max(sizes)) + 1
        p.cmd("RETR %d" % n)
        lines = []
        try:
            while True:
                lines.append(p.readline())
        except EOFError:
            pass
        # no terminating dot: the client sees a broken download
        assert lines[0].startswith("+OK") and lines[-1] != ".", lines[-1:]
    finally:
        p.close()


def write_mail_root(harness, dc, root):
    """The provider's history: deliveries, downloads under each policy,
    a rotated key, recovery keys, an imported UIDL, a damaged message.
    Returns the recovery keys and {user: [message bytes]}."""
    from crypt_util import imap_append
    recovery = {}
    originals = {}
    for user in us.USERS:
        if user in us.PASSWORD_USERS:
            # password mode: the first login creates the key pair
            dc.pop3(user).quit()
        msgs = messages(harness, user)
        originals[user] = msgs
        dc.deliver_many(user, msgs[:4])
        imap_append(dc, user, msgs[4], flags="\\Flagged", date=OLD_DATE)
    # password mode with two key pairs: mail under the old and the new one
    dc.doveadm("popvault", "key", "rotate", "-u", "frank", "-P",
               input=(us.password("frank") + "\n").encode())
    extra = harness.make_message("frank after rotation")
    originals["frank"].append(extra)
    dc.deliver("frank", extra)
    for user in us.PASSWORD_USERS:
        _, out, _ = dc.doveadm("-f", "tab", "popvault", "key", "recovery",
                               "-u", user, "-P",
                               input=(us.password(user) + "\n").encode())
        recovery[user] = re.search(r"(pvrk1-[0-9a-f-]{71})", out).group(1)
    # an UIDL from the provider's previous server
    imports = os.path.join(dc.tmp, "uidls.txt")
    with open(imports, "w") as f:
        f.write("# from the old server\nOLD-POP-0001 "
                "<import-alice@old.example>\n")
    _, out, _ = dc.doveadm("popvault", "uidl", "import", "-u", "alice",
                           imports)
    assert "not found" not in out, out
    # downloads: first-download clocks, $POP3Downloaded, hidden mail;
    # DELE of the old message: moved (bob) and hidden (gina); the others
    # keep it, with its retain_unread clock from the old date
    for user in us.USERS:
        keeps = us.USERS[user]["fields"].get("popvault_on_dele", "expunge")
        dele = (5,) if keeps != "expunge" else ()
        pop3_session(dc, user, retr=(1, 2), dele=dele)
    damage_later_chunk(dc, us.DAMAGED_USER)
    for user, d in us.USERS.items():
        if d.get("compress"):
            check_compressed(dc, user, originals[user])
    # LOGIN-DELAY: a full login starts the delay, the next one is refused
    dc.deliver(us.DELAY_USER, harness.make_message("june's mail"))
    dc.pop3(us.DELAY_USER).quit()
    problem = us.login_delay_refused(dc)
    assert problem is None, problem
    return recovery, originals


def check_compressed(dc, user, originals):
    """The mail really went through zlib (and then, for an encrypting
    user, through popvault: ciphertext would not compress)."""
    from crypt_util import message_files
    stored = sum(os.path.getsize(f) for f in message_files(dc, user))
    assert stored < sum(map(len, originals)) // 2, (user, stored)


def ends_with_one_of(originals):
    """A check for every body read back: 2.3 itself returns what was
    stored (LMTP adds its trace headers in front; POP3 ends the last line
    with CRLF)."""
    tails = [o if o.endswith(b"\r\n") else o + b"\r\n" for o in originals]

    def check(where, body):
        assert any(body.endswith(t) for t in originals + tails), where
    return check


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--mail-root", required=True)
    args = ap.parse_args()
    harness = us.import_harness(args.build_dir)
    root = os.path.abspath(args.mail_root)
    os.makedirs(os.path.join(root, "home"))
    os.makedirs(os.path.dirname(us.master_key_path(root)))
    os.chmod(root, 0o755)
    with open(us.master_key_path(root), "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    dc = us.server(harness, root)
    with dc:
        # only the mail processes' uid reads the master key
        os.chown(us.master_key_path(root), dc.mail_uid, dc.mail_gid)
        os.chmod(us.master_key_path(root), 0o600)
        recovery, originals = write_mail_root(harness, dc, root)
        state = {"dovecot": "%d.%d" % harness.DOVECOT_VERSION,
                 "recovery": recovery,
                 "inventory": {u: us.inventory(
                     dc, u, ends_with_one_of(originals[u]))
                     for u in us.USERS}}
    with open(us.state_path(root), "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    print("upgrade phase 1: Dovecot %s wrote %d users' mail in %s"
          % (state["dovecot"], len(us.USERS), root))
    return 0


if __name__ == "__main__":
    sys.exit(main())

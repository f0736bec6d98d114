"""Hostile input (issue 8): malformed POP3 commands, message numbers a
client must not reach, injection attempts in move:<mailbox> settings and
files crafted to look encrypted. Each gets a clear error and nothing else
changes: an inventory of every mailbox (UIDs, flags, body hashes) and of
the mail root's directories is taken before and compared after."""

import hashlib
import os
import re

from harness import User, dovecot, make_message
from policy_util import append_dated, list_mailboxes
from crypt_util import MAGIC, crypt_dovecot, enc_fields, fetch_one, \
    message_files


def full_inventory(dc, user):
    """{mailbox: [(uid, flags, sha256 of BODY[])]} over IMAP."""
    c = dc.imap(user)
    try:
        inv = {}
        for box in sorted(list_mailboxes(c)):
            st, out = c.command('EXAMINE "%s"' % box)
            assert " OK" in st, st
            msgs = []
            if not re.search(rb"\* 0 EXISTS", out):
                st, out = c.command("UID FETCH 1:* (FLAGS BODY.PEEK[])")
                assert " OK" in st, st
                for m in re.finditer(rb"UID (\d+) FLAGS \(([^)]*)\) "
                                     rb"BODY\[\] \{(\d+)\}\r\n", out):
                    body = out[m.end():m.end() + int(m.group(3))]
                    msgs.append((int(m.group(1)),
                                 # \Recent belongs to the session
                                 " ".join(sorted(
                                     f for f in m.group(2).decode().split()
                                     if f != "\\Recent")),
                                 hashlib.sha256(body).hexdigest()))
            inv[box] = msgs
        return inv
    finally:
        c.logout()


def directories(root):
    return sorted(d for d, _, _ in os.walk(root))


def assert_no_crash(dc):
    log = dc.log()
    for bad in ("Panic:", "Fatal:", "killed with signal",
                "AddressSanitizer", "runtime error:"):
        assert bad not in log, "%s in the log:\n%s" % (bad, dc.log_tail(30))


def test_malformed_pop3_commands_change_nothing():
    users = [User("hx", fields={"popvault_after_retr": "move:Archive",
                                "popvault_on_dele": "hide"})]
    with dovecot(users) as dc:
        dc.deliver_many("hx", [make_message("h%d" % i) for i in range(3)])
        before = full_inventory(dc, "hx")
        dirs = directories(dc.home("hx"))

        # pop3 disconnects after 20 bad commands: two sessions
        for lines in (("RETR", "RETR abc", "RETR -1", "RETR 0", "RETR 4",
                       "RETR 99999999999999999999", "TOP 1", "TOP 1 -5",
                       "TOP 4 0", "TOP x y"),
                      ("DELE 0", "DELE 4", "DELE 4294967297", "LIST 4",
                       "UIDL 0", "UIDL 4", "\x01\x02\x7f\xff", "X" * 1000,
                       "RETR " + "9" * 500)):
            p = dc.pop3("hx")
            for line in lines:
                r = p.command(line)
                assert r.startswith("-ERR"), (line[:40], r)
            # the session is still usable and nothing was marked
            assert p.stat()[0] == 3
            r = p.command("QUIT")
            assert r.startswith("+OK"), r
            p.close()

        # a line past pop3's input limit ends the session ("Input line
        # too long"), nothing else
        p = dc.pop3("hx")
        p.send(b"RETR 1" + b" " * 70000 + b"\r\nQUIT\r\n")
        try:
            while True:
                p.readline()
        except (EOFError, ConnectionError, OSError):
            pass
        p.close()

        after = full_inventory(dc, "hx")
        assert after == before, (before, after)
        assert directories(dc.home("hx")) == dirs
        assert_no_crash(dc)


def test_hidden_and_out_of_window_numbers_stay_unreachable():
    users = [User("hw", fields={"popvault_on_dele": "hide",
                                "popvault_list_window": "30d"})]
    with dovecot(users) as dc:
        dc.deliver_many("hw", [make_message("new%d" % i) for i in range(3)])
        # one message older than the window
        append_dated(dc, "hw", "old", "01-Jan-2020 10:00:00 +0000")
        # hide new0 with a client DELE
        p = dc.pop3("hw")
        assert p.stat()[0] == 3
        assert p.command("DELE 1").startswith("+OK")
        assert p.quit().startswith("+OK")

        before = full_inventory(dc, "hw")
        assert len(before["INBOX"]) == 4
        p = dc.pop3("hw")
        assert p.stat()[0] == 2      # new1, new2
        for line in ("RETR 3", "TOP 3 0", "DELE 3", "LIST 3", "UIDL 3",
                     "RETR 4", "TOP 4 0", "DELE 4"):
            r = p.command(line)
            assert r.startswith("-ERR"), (line, r)
        subjects = []
        for n in (1, 2):
            r, lines = p.multi("TOP %d 0" % n)
            assert r.startswith("+OK"), r
            subjects += [l for l in lines if l.startswith("Subject: ")]
        assert subjects == ["Subject: new1", "Subject: new2"], subjects
        assert p.quit().startswith("+OK")
        assert full_inventory(dc, "hw") == before
        assert_no_crash(dc)


BAD_TARGETS = {
    "dots": "move:..",
    "traverse": "move:a/../b",
    "absolute": "move:/etc",
    "tilde": "move:~root",
    "dotfirst": "move:.hidden",
    "dslash": "move:a//b",
    "ctrl": "move:a\x01b",
    "newline": "move:a\nb",
    "tab": "move:a\tb",
    "long": "move:" + "A" * 300,
    "inbox": "move:INBOX",
    "empty": "move:",
    "nul": "move:Arch\x00/../../etc",
}


def test_move_target_injection_refused():
    users = [User("inj%s" % k, fields={"popvault_on_dele": v})
             for k, v in BAD_TARGETS.items()]
    users.append(User("fine", fields={"popvault_on_dele": "move:Trash"}))
    # SQL carries what passwd-file cannot: spaces, control bytes, NUL
    with dovecot(users, userdb="sqlite") as dc:
        dc.deliver("fine", make_message("ok"))
        homes = os.path.join(dc.tmp, "home")
        # "fine" and "injnul" log in: their own homes may appear (injnul's
        # session ends after the client left, and its end-of-session work
        # may create its Maildir late); nothing else may
        own = (dc.home("fine") + "/", dc.home("injnul") + "/")
        dirs = [d for d in directories(homes)
                if not (d + "/").startswith(own)]
        for u in users[:-1]:
            p = dc.pop3()
            assert p.command("USER " + u.name).startswith("+OK")
            r = p.command("PASS " + u.password)
            p.close()
            if u.name == "injnul":
                # Dovecot hands the value over up to the NUL: "move:Arch"
                # is a valid target, nothing past it may be used
                assert r.startswith("+OK"), r
                continue
            assert r.startswith("-ERR [SYS/TEMP]"), (u.name, r)
            dc.wait_log(r"Error: popvault: user %s: Invalid "
                        r"popvault_on_dele=" % u.name)
        # the refused logins created no directory anywhere
        assert [d for d in directories(homes)
                if not (d + "/").startswith(own)] == dirs
        assert not os.path.exists(os.path.join(dc.tmp, "etc"))
        p = dc.pop3("fine")
        assert p.stat()[0] == 1
        assert p.command("DELE 1").startswith("+OK")
        assert p.quit().startswith("+OK")
        inv = full_inventory(dc, "fine")
        assert len(inv.get("Trash", [])) == 1 and not inv["INBOX"], inv
        assert_no_crash(dc)


def test_crafted_encrypted_looking_file_fails_alone():
    users = [User("cf", fields=enc_fields())]
    with crypt_dovecot(users) as dc:
        originals = [make_message("real%d" % i, body="body %d\r\n" % i)
                     for i in range(2)]
        dc.deliver_many("cf", originals)
        files = message_files(dc, "cf")
        assert len(files) == 2
        # a file that starts like a container and is garbage after it,
        # put where the next delivery would go
        newdir = os.path.join(os.path.dirname(files[0]), "..", "new")
        forged = os.path.join(newdir, "1700000000.forged.host")
        with open(forged, "wb") as f:
            f.write(MAGIC + os.urandom(300))
        os.chown(forged, dc.mail_uid, dc.mail_gid)

        p = dc.pop3("cf")
        assert p.stat()[0] == 3
        bodies = {}
        for n in (1, 2, 3):
            r, lines = p.multi("RETR %d" % n)
            if r.startswith("+OK"):
                bodies[n] = ("\r\n".join(lines) + "\r\n").encode("latin-1")
            else:
                assert n == 3, (n, r)
        assert sorted(bodies) == [1, 2], bodies.keys()
        for n, original in zip((1, 2), originals):
            # LMTP adds Return-Path, Delivered-To and Received
            assert bodies[n].endswith(original), (n, bodies[n])
        r = p.command("TOP 3 0")
        assert r.startswith("-ERR"), r
        assert p.stat()[0] == 3      # the session goes on
        assert p.quit().startswith("+OK")

        st, out = fetch_one(dc, "cf", 3, "BODY.PEEK[]")
        assert " NO" in st, st
        st, out = fetch_one(dc, "cf", 1, "BODY.PEEK[]")
        assert " OK" in st, st
        dc.wait_log(r"popvault: crypt: user cf mailbox INBOX uid 3: "
                    r"can't read message")
        assert os.path.exists(forged) or any(
            "forged" in f for f in message_files(dc, "cf"))
        assert_no_crash(dc)

"""Concurrency (issue 8): two POP3 sessions on one mailbox without the
session lock, IMAP expunging under an open POP3 session, and a retention
sweep while a POP3 session is open. Whatever the interleaving: no crash,
no message lost, none moved or copied twice."""

import re
from collections import Counter

from harness import User, dovecot
from policy_util import deliver_numbered, imap_inventory

NO_LOCK = "pop3_lock_session = no\n"


def all_subjects(dc, user):
    """(inventory, Counter of subjects over every message of every
    mailbox): imap_inventory() keys by subject, so duplicates are
    counted over IMAP here."""
    inv = imap_inventory(dc, user)
    count = Counter()
    c = dc.imap(user)
    try:
        for box in inv:
            st, out = c.command('EXAMINE "%s"' % box)
            assert " OK" in st, st
            if re.search(rb"\* 0 EXISTS", out):
                continue
            st, out = c.command(
                "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert " OK" in st, st
            count.update(s.decode() for s in
                         re.findall(rb"Subject: (\S+)", out))
    finally:
        c.logout()
    return inv, count


def assert_no_crash(dc):
    log = dc.log()
    for bad in ("Panic:", "Fatal:", "killed with signal"):
        assert bad not in log, "%s in the log:\n%s" % (bad, dc.log_tail(30))


def test_two_pop3_sessions_move_each_message_once():
    users = [User("cc", fields={"popvault_after_retr": "move:Archive",
                                "popvault_on_dele": "move:Trash"})]
    with dovecot(users, extra_conf=NO_LOCK) as dc:
        deliver_numbered(dc, "cc", 6)
        a = dc.pop3("cc")
        b = dc.pop3("cc")
        assert a.stat()[0] == 6 and b.stat()[0] == 6
        for n in (1, 2, 3):
            a.retr(n)
        assert a.command("DELE 4").startswith("+OK")
        for n in (2, 3, 5):
            b.retr(n)
        for n in (3, 6):
            assert b.command("DELE %d" % n).startswith("+OK")
        ra = a.quit()
        rb = b.quit()
        assert ra.startswith("+OK"), ra
        # the second QUIT finds 2 and 3 already gone: it either skips
        # them or fails whole; it never copies them again
        assert rb.startswith("+OK") or rb.startswith("-ERR [SYS/TEMP]"), rb

        inv, count = all_subjects(dc, "cc")
        assert sorted(count) == ["m%d" % i for i in range(1, 7)], inv
        assert all(c == 1 for c in count.values()), inv
        assert sorted(inv.get("Archive", {})) >= ["m1", "m2", "m3"], inv
        assert "m4" in inv.get("Trash", {}), inv
        if rb.startswith("+OK"):
            assert "m5" in inv["Archive"] and "m6" in inv["Trash"], inv
        assert_no_crash(dc)


def test_two_pop3_sessions_delete_policy():
    users = [User("cd", fields={"popvault_after_retr": "delete"})]
    with dovecot(users, extra_conf=NO_LOCK) as dc:
        deliver_numbered(dc, "cd", 4)
        a = dc.pop3("cd")
        b = dc.pop3("cd")
        for n in (1, 2):
            a.retr(n)
        for n in (2, 3):
            b.retr(n)
        assert a.quit().startswith("+OK")
        rb = b.quit()
        assert rb.startswith("+OK") or rb.startswith("-ERR [SYS/TEMP]"), rb
        inv, count = all_subjects(dc, "cd")
        # only what a client downloaded may be gone, m4 never
        assert "m4" in inv["INBOX"], inv
        assert "m1" not in count and "m2" not in count, inv
        assert all(c == 1 for c in count.values()), inv
        assert_no_crash(dc)


def test_imap_expunge_during_pop3_session():
    users = [User("ce", fields={"popvault_after_retr": "hide"})]
    with dovecot(users) as dc:
        deliver_numbered(dc, "ce", 4)
        p = dc.pop3("ce")
        assert p.stat()[0] == 4
        dc.imap_expunge("ce", "2")
        # pop3 keeps its numbering; the gone message is an error or its
        # old content, never another message's
        r, lines = p.multi("RETR 2")
        if r.startswith("+OK"):
            assert "Subject: m2" in lines, lines
        else:
            assert r.startswith("-ERR"), r
        assert "Subject: m3" in p.multi("RETR 3")[1]
        r = p.quit()
        assert r.startswith("+OK") or r.startswith("-ERR"), r
        inv, count = all_subjects(dc, "ce")
        assert sorted(count) == ["m1", "m3", "m4"], inv
        assert all(c == 1 for c in count.values()), inv
        assert "$POP3Hidden" in inv["INBOX"]["m3"] or \
            not r.startswith("+OK"), inv
        assert_no_crash(dc)


def test_sweep_while_pop3_session_is_open():
    users = [User("cs", fields={"popvault_retain_unread": "1d",
                                "popvault_expire_action": "move:Expired"})]
    with dovecot(users) as dc:
        deliver_numbered(dc, "cs", 4)
        p = dc.pop3("cs")
        assert p.stat()[0] == 4
        # two days later by the sweep's clock: the never-downloaded mail
        # is due while the session still holds its view
        dc.doveadm("popvault", "sweep", "-u", "cs", faketime="+2d")
        r, lines = p.multi("RETR 3")
        if r.startswith("+OK"):
            assert "Subject: m3" in lines, lines
        r = p.quit()
        assert r.startswith("+OK") or r.startswith("-ERR"), r
        inv, count = all_subjects(dc, "cs")
        assert sorted(count) == ["m1", "m2", "m3", "m4"], inv
        assert all(c == 1 for c in count.values()), inv
        assert sorted(inv.get("Expired", {})) == ["m1", "m2", "m3", "m4"], \
            inv
        assert_no_crash(dc)


def _cut_short_move(dc, user, mark):
    """The state a kill between a move's two commits leaves: the message
    in INBOX and its copy (same GUID) in Archive, INBOX's copy marked
    when the move had begun."""
    dc.doveadm("mailbox", "create", "-u", user, "Archive")
    dc.doveadm("copy", "-u", user, "Archive", "mailbox", "INBOX", "all")
    if mark:
        dc.doveadm("flags", "add", "-u", user, "$PopvaultMoving",
                   "mailbox", "INBOX", "all")


def test_move_cut_short_is_not_copied_again():
    # sdbox: a copy there is a new file with the same GUID (maildir's
    # hardlink copy would collide on the GUID file name by itself)
    users = [User("mv", fields={"popvault_after_retr": "move:Archive"}),
             User("ctl", fields={"popvault_after_retr": "move:Archive"})]
    with dovecot(users, mail_format="sdbox") as dc:
        for u in ("mv", "ctl"):
            deliver_numbered(dc, u, 2)
        _cut_short_move(dc, "mv", mark=True)
        # control: without the mark the same state is two distinct
        # copies as far as popvault knows, and it copies again
        _cut_short_move(dc, "ctl", mark=False)
        for u in ("mv", "ctl"):
            p = dc.pop3(u)
            p.retr(1)
            p.retr(2)
            assert p.quit().startswith("+OK")
        inv, count = all_subjects(dc, "mv")
        assert not inv["INBOX"], inv
        assert count == Counter({"m1": 1, "m2": 1}), inv
        assert dc.wait_log(r"policy: uid 1 guid \S+ is already in Archive")
        # the mark leaves with the source; copies never carry it
        assert all("$PopvaultMoving" not in flags
                   for flags in inv["Archive"].values()), inv
        _, ctl = all_subjects(dc, "ctl")
        assert ctl == Counter({"m1": 2, "m2": 2}), ctl
        assert_no_crash(dc)


def test_cut_short_move_is_finished_after_the_next_session():
    users = [User("rc", fields={"popvault_on_dele": "move:Archive"})]
    with dovecot(users, mail_format="sdbox") as dc:
        deliver_numbered(dc, "rc", 3)
        # m1: copied, then the process died; m2: marked, died before the
        # copy; m3: untouched
        dc.doveadm("mailbox", "create", "-u", "rc", "Archive")
        dc.doveadm("copy", "-u", "rc", "Archive", "mailbox", "INBOX",
                   "header", "Subject", "m1")
        for subject in ("m1", "m2"):
            dc.doveadm("flags", "add", "-u", "rc", "$PopvaultMoving",
                       "mailbox", "INBOX", "header", "Subject", subject)
        p = dc.pop3("rc")
        assert p.stat()[0] == 3
        assert p.quit().startswith("+OK")
        # the recovery runs after the client is gone: look once the
        # session's process has ended
        dc.wait_sessions_end("pop3")
        inv, count = all_subjects(dc, "rc")
        assert sorted(inv["INBOX"]) == ["m2", "m3"], inv
        assert count == Counter({"m1": 1, "m2": 1, "m3": 1}), inv
        assert "$PopvaultMoving" not in inv["INBOX"]["m2"], inv
        dc.wait_log(r"uid 1 guid \S+: finishing a move to Archive")
        assert_no_crash(dc)

"""Concurrency (issue 8): two POP3 sessions on one mailbox without the
session lock, IMAP expunging under an open POP3 session, and a retention
sweep while a POP3 session is open. Whatever the interleaving: no crash,
no message lost, none moved or copied twice."""

from collections import Counter

from harness import User, dovecot
from policy_util import deliver_numbered, imap_inventory

NO_LOCK = "pop3_lock_session = no\n"


def all_subjects(dc, user):
    """Counter of subjects over every mailbox of the user."""
    inv = imap_inventory(dc, user)
    return inv, Counter(s for box in inv.values() for s in box)


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
        c = dc.imap("ce")
        try:
            assert " OK" in c.command("SELECT INBOX")[0]
            assert " OK" in c.command("STORE 2 +FLAGS (\\Deleted)")[0]
            assert " OK" in c.command("EXPUNGE")[0]
        finally:
            c.logout()
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

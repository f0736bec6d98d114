"""Helpers shared by the policy tests: inventory over IMAP, scripted POP3
sessions, and the session-consistency check."""

import re

from harness import make_message


def deliver_numbered(dc, user, n, prefix="m"):
    dc.deliver_many(user, [make_message("%s%d" % (prefix, i),
                                        body="body of %s%d\r\n" % (prefix, i))
                           for i in range(1, n + 1)])


def list_mailboxes(c):
    """Names of every mailbox, over a logged-in IMAP connection."""
    status, out = c.command('LIST "" "*"')
    assert " OK" in status, status
    return [b.decode() for b in re.findall(
        rb'^\* LIST \([^)]*\) "[^"]*" "?([^"\r\n]+)"?\r$', out, re.M)]


def imap_inventory(dc, user):
    """{mailbox: {subject: set(flags)}} for every mailbox of the user."""
    c = dc.imap(user)
    try:
        inv = {}
        for box in list_mailboxes(c):
            status, out = c.command('EXAMINE "%s"' % box)
            assert " OK" in status, status
            count = int(re.search(rb"\* (\d+) EXISTS", out).group(1))
            msgs = {}
            if count:
                status, out = c.command(
                    "FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                assert " OK" in status, status
                for flags, subj in re.findall(
                        rb"FLAGS \(([^)]*)\).*?Subject: (\S+)", out, re.S):
                    msgs[subj.decode()] = set(flags.decode().split())
            inv[box] = msgs
        return inv
    finally:
        c.logout()


def subjects(inv, box):
    return sorted(inv.get(box, {}).keys())


def pop3_session(dc, user, retr=(), dele=(), top=(), quit=True):
    """RETR, TOP and DELE by message number, then QUIT or just drop.
    Returns the QUIT reply (None when dropped)."""
    p = dc.pop3(user)
    for n in retr:
        p.retr(n)
    for n in top:
        r, _ = p.multi("TOP %d 0" % n)
        assert r.startswith("+OK"), r
    for n in dele:
        r = p.command("DELE %d" % n)
        assert r.startswith("+OK"), r
    if not quit:
        p.close()
        return None
    return p.quit()


def pop3_listing(dc, user):
    """Subjects a new POP3 session lists, checked for consistency: STAT,
    LIST, UIDL and the messages themselves agree; nothing past the last
    number exists. Uses TOP, which no policy counts as a download."""
    p = dc.pop3(user)
    try:
        count, size = p.stat()
        listing = p.list()
        uidls = p.uidl()
        assert [n for n, _ in listing] == list(range(1, count + 1)), listing
        assert [int(n) for n, _ in uidls] == list(range(1, count + 1)), uidls
        assert sum(s for _, s in listing) == size, (listing, size)
        assert len(set(u for _, u in uidls)) == count, uidls
        subs = []
        for n, _ in listing:
            r, lines = p.multi("TOP %d 0" % n)
            assert r.startswith("+OK"), r
            subj = [l[9:] for l in lines if l.startswith("Subject: ")]
            subs.append(subj[0])
        r = p.command("TOP %d 0" % (count + 1))
        assert r.startswith("-ERR"), r
        r = p.command("LIST %d" % (count + 1))
        assert r.startswith("-ERR"), r
        return subs
    finally:
        p.command("QUIT")
        p.close()


def append_dated(dc, user, subject, internaldate):
    """IMAP APPEND with an INTERNALDATE: the honest way to age mail."""
    c = dc.imap(user)
    try:
        msg = make_message(subject)
        c.cmd('a1 APPEND INBOX "%s" {%d}' % (internaldate, len(msg)))
        assert c.readline().startswith("+")
        c.send(msg + b"\r\n")
        r = c.readline()
        assert r.startswith("a1 OK"), r
    finally:
        c.logout()

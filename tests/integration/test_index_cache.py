"""Dovecot's index cache (issue 15, item 5): a global popvault_master_key
(plugin {}, as docs/admin-guide.md suggests for everyone) leaves a user
who does not encrypt and has no keys with exactly Dovecot's cache; users
who encrypt or have keys get no cache and no plaintext in any file."""

import os
import re

from harness import User, make_message
from crypt_util import (MAGIC, all_files, crypt_dovecot, enc_fields,
                        imap_append, message_files, new_file)

MARKS = [b"CACHESUBJ1", b"CACHEFROM2", b"CACHEBODY3"]
DATE = "Thu, 01 Jan 2026 10:00:00 +0000"
FETCH = ("FETCH 1:* (ENVELOPE BODYSTRUCTURE RFC822.SIZE "
         "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")


def _messages():
    return [make_message("subject %s %d" % (MARKS[0].decode(), i),
                         sender="%s@example.com" % MARKS[1].decode(),
                         body="text %s %d\r\n" % (MARKS[2].decode(), i),
                         msgid="<cache-%d@popvault.test>" % i, date=DATE)
            for i in range(3)]


def _use_mailbox(dc, user):
    """The same APPENDs (fixed INTERNALDATE) and FETCHes in two sessions,
    so Dovecot's caching decisions run as they would."""
    c = dc.imap(user)
    try:
        for m in _messages():
            c.cmd('a0 APPEND INBOX "01-Jan-2026 10:00:00 +0000" {%d}'
                  % len(m))
            assert c.readline().startswith("+")
            c.send(m + b"\r\n")
            assert c.readline().startswith("a0 OK")
    finally:
        c.logout()
    for _ in range(2):
        c = dc.imap(user)
        try:
            assert " OK" in c.command("SELECT INBOX")[0]
            st, out = c.command(FETCH)
            assert " OK" in st, st
            assert MARKS[0] in out
        finally:
            c.logout()


def _cache_dump(dc, user):
    """Dovecot's view of the user's INBOX cache: fields with type and
    decision, and every cached value, without the "last used" times."""
    maildir = os.path.join(dc.home(user), "Maildir")
    if not os.path.exists(os.path.join(maildir, "dovecot.index.cache")):
        return None
    _, out, _ = dc.doveadm("dump", "-t", "index", maildir)
    out = out[out.index("-- Cache fields --"):]
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d$", "<time>", out, flags=re.M)


def test_global_master_key_keeps_dovecot_cache_for_plain_users():
    with crypt_dovecot([User("plain")], with_popvault=False) as dc:
        _use_mailbox(dc, "plain")
        without_popvault = _cache_dump(dc, "plain")
    assert without_popvault is not None
    # Dovecot cached header values (2.3 decides for Subject, 2.4 for
    # Message-ID here): there is a cache to compare
    assert re.search(r"- hdr\.[\w-]+: \d+: \S", without_popvault), \
        without_popvault

    users = [User("plain"),
             User("enc", fields=enc_fields()),
             # encryption off, but a key pair (old encrypted mail may exist)
             User("keyed")]
    with crypt_dovecot(users,
                       plugin={"popvault_master_key": "<MASTER>"}) as dc:
        dc.doveadm("popvault", "key", "generate", "-u", "keyed")
        for u in ("plain", "enc", "keyed"):
            _use_mailbox(dc, u)
        # the plain user: Dovecot's cache, field for field, value for value
        assert _cache_dump(dc, "plain") == without_popvault
        assert not [l for l in dc.log().splitlines()
                    if "imap(plain)" in l and "Cache file is unusable" in l]
        # the others: no cache, and the encrypting user's mail and every
        # other file of theirs carry no plaintext
        for u in ("enc", "keyed"):
            assert not [p for p in all_files(dc.home(u))
                        if p.endswith("dovecot.index.cache")], u
        assert all(open(p, "rb").read().startswith(MAGIC)
                   for p in message_files(dc, "enc"))
        leaks = []
        for path in all_files(dc.home("enc"), dc.mail_temp_dir,
                              os.path.join(dc.tmp, "state")):
            with open(path, "rb") as f:
                data = f.read()
            leaks += [(path, m) for m in MARKS if m in data]
        assert leaks == [], leaks
        assert dc.log_errors() == [], dc.log_errors()


def test_cache_off_from_the_first_key_pair_on():
    # A user who only inherits the master key has the cache. An IMAP
    # session of theirs has INBOX open when another process saves the
    # first encrypted message (making the key pair): what that session
    # decrypts never goes into the cache; later opens have no cache.
    with crypt_dovecot([User("late")],
                       plugin={"popvault_master_key": "<MASTER>"}) as dc:
        imap_append(dc, "late", _messages()[0])
        cache = os.path.join(dc.home("late"), "Maildir",
                             "dovecot.index.cache")
        c = dc.imap("late")
        try:
            assert " OK" in c.command("SELECT INBOX")[0]
            assert " OK" in c.command(FETCH)[0]
            assert os.path.exists(cache)
            # another process of the user with encryption on
            secret = b"LATESUBJ9f"
            before = message_files(dc, "late")
            dc.doveadm("-o", "plugin/popvault_encrypt=yes", "save", "-u",
                       "late", input=make_message(secret.decode(),
                                                  body="late body\r\n"))
            with open(new_file(dc, "late", before), "rb") as f:
                assert f.read().startswith(MAGIC)
            for _ in range(2):
                st, out = c.command("NOOP")
                st, out = c.command(FETCH)
                assert " OK" in st and secret in out, (st, out)
        finally:
            c.logout()
        for path in all_files(dc.home("late")):
            with open(path, "rb") as f:
                assert secret not in f.read(), path
        os.unlink(cache)
        c = dc.imap("late")
        try:
            assert " OK" in c.command("SELECT INBOX")[0]
            assert " OK" in c.command(FETCH)[0]
        finally:
            c.logout()
        assert not os.path.exists(cache)

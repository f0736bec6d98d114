"""FTS beside encryption (issue 18): an FTS index holds the words of every
message in plaintext, so a user with encrypted mail and FTS on is refused
at login and at delivery unless popvault_allow_fts=yes; users without
encrypted mail keep FTS. Runs Debian 12's own FTS backends."""

import os
import re
import unittest

from harness import User, by_version, make_message
from crypt_util import all_files, crypt_dovecot, enc_fields, message_files

# backend -> (mail_plugins words, plugin {} settings, other configuration),
# as the packages' own documentation configures them. Dovecot 2.4 names the
# backend in an fts <driver> { } filter; it has no lucene, and brings
# flatcurve (2.3 has no flatcurve in Debian 12).
BACKENDS = by_version({
    "lucene": ("fts fts_lucene", {"fts": "lucene"}, ""),
    "xapian": ("fts fts_xapian", {"fts": "xapian",
                                  "fts_xapian": "partial=3 full=20"}, ""),
}, {
    "flatcurve": ("fts fts_flatcurve", {}, "fts flatcurve {\n}\n"),
    "xapian": ("fts fts_xapian", {}, "fts xapian {\n}\n"),
})

WORD = "zebracornflakes"


def _imap_search_finds(dc, user, word):
    i = dc.imap(user)
    try:
        st, _ = i.command("SELECT INBOX")
        assert " OK" in st, st
        st, out = i.command("SEARCH TEXT %s" % word)
        assert " OK" in st, st
        return re.search(rb"^\* SEARCH \d", out, re.M) is not None
    finally:
        i.logout()


def _assert_imap_refused(dc, user):
    """imap-login has already said OK when the mail process fails the
    user: Dovecot then answers "initialization failed" and BYE and
    closes, as for every user init error; no command runs."""
    i = dc.imap()
    try:
        st = i.login(user, dc.users[user].password)
        assert "initialization failed" in st, st
        assert i.readline().startswith("* BYE "), "no BYE"
        try:
            i.cmd("a9 SELECT INBOX")
            line = i.readline()
        except (EOFError, OSError):
            line = None
        assert line is None, line
    finally:
        i.close()


def _run(backend):
    if backend not in BACKENDS:
        raise unittest.SkipTest("no %s FTS backend for this Dovecot" % backend)
    plugins, plugin, conf = BACKENDS[backend]
    users = [User("enc", fields=enc_fields()),
             User("encok", fields=enc_fields(popvault_allow_fts="yes")),
             User("plain"),
             User("policy", fields={"popvault_after_retr": "keep"})]
    with crypt_dovecot(users, mail_plugins="popvault " + plugins,
                       plugin=dict(plugin), extra_conf=conf) as dc:
        msg = make_message("fts %s" % WORD, body="body %s\r\n" % WORD)

        # refused: delivery (the MTA keeps the mail queued), POP3, IMAP
        c = dc.lmtp()
        r = c.deliver("enc", msg)["enc"]
        c.quit()
        assert r.startswith("4"), r
        line = dc.wait_log(r"Error: .*popvault: user enc: FTS \(fts=%s\)[^\n]*"
                           % backend).group(0)
        assert "popvault_allow_fts=yes" in line, line
        assert message_files(dc, "enc") == []
        p = dc.pop3()
        assert p.command("USER enc").startswith("+OK")
        r = p.command("PASS " + dc.users["enc"].password)
        p.close()
        assert r.startswith("-ERR [SYS/TEMP]"), r
        _assert_imap_refused(dc, "enc")

        # opted in: delivered, logged in, one warning naming the backend
        dc.deliver("encok", msg)
        assert len(message_files(dc, "encok")) == 1
        dc.pop3("encok").quit()
        assert _imap_search_finds(dc, "encok", WORD)
        dc.wait_log(r"Warning: popvault: crypt: user encok: FTS \(fts=%s\) "
                    r"indexes the words of encrypted mail in plaintext "
                    r"\(allowed by popvault_allow_fts=yes\)" % backend)

        # users without encrypted mail: FTS works as before, no word
        for user in ("plain", "policy"):
            dc.deliver(user, msg)
            assert _imap_search_finds(dc, user, WORD), user
            dc.pop3(user).quit()
        log = dc.log()
        assert not re.search(r"user (plain|policy): FTS", log), log

        # the backend really indexed (so the refusal was not moot): its
        # index holds the word for the plain user
        index_files = [p for p in all_files(dc.home("plain"))
                       if p not in message_files(dc, "plain")]
        assert any(WORD.encode() in open(p, "rb").read()
                   for p in index_files), index_files


def test_fts_lucene_refused_for_encrypting_user():
    _run("lucene")


def test_fts_xapian_refused_for_encrypting_user():
    _run("xapian")


def test_fts_flatcurve_refused_for_encrypting_user():
    _run("flatcurve")


def test_fts_off_is_not_refused():
    """The fts plugin loaded without a backend (fts unset) indexes
    nothing: encrypting users are not refused."""
    users = [User("enc", fields=enc_fields())]
    with crypt_dovecot(users, mail_plugins="popvault fts") as dc:
        dc.deliver("enc", make_message("no backend"))
        dc.pop3("enc").quit()
        assert "FTS" not in dc.log()
        assert os.path.isdir(dc.home("enc"))

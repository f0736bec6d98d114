"""Shared mailboxes (issue 15, item 6): saving, copying and reading in
another user's shared folder follow the folder's owner, with the shared
namespace and acl configuration exactly as docs/encryption.md gives it."""

import contextlib
import os
import re
import shutil
import tempfile

from harness import DOVECOT_24, User, by_version, make_message
from crypt_util import (MAGIC, all_files, crypt_dovecot, enc_fields,
                        imap_append, literal, message_files)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DICT_PATH = "/var/lib/dovecot/shared-mailboxes.db"


def _docs_form(dovecot_24=DOVECOT_24):
    """The configuration block of docs/encryption.md, "Shared mailboxes"
    (the first for 2.3, the second for 2.4)."""
    with open(os.path.join(ROOT, "docs", "encryption.md"),
              encoding="utf-8") as f:
        doc = f.read()
    section = doc.split("\n## Shared mailboxes\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```dovecot-2\.%d\n(.*?)^```$"
                        % (4 if dovecot_24 else 3), section, re.S | re.M)
    block = blocks[0]
    assert DICT_PATH in block
    return block


def test_shared_form_in_conf_example_matches_docs():
    # the commented examples in 90-popvault.conf and 90-popvault-24.conf
    # are the same forms
    for name, form in (("90-popvault.conf", _docs_form(False)),
                       ("90-popvault-24.conf", _docs_form(True))):
        with open(os.path.join(ROOT, "dovecot-conf", "conf.d", name),
                  encoding="utf-8") as f:
            conf = f.read()
        commented = [l[1:] for l in conf.splitlines() if l.startswith("#")]
        text = "\n".join(commented)
        assert form.strip() in text, "%s differs" % name


@contextlib.contextmanager
def _shared_dovecot(users):
    """crypt_dovecot with the documented form; only the dict's path is
    this test's own."""
    dict_dir = tempfile.mkdtemp(prefix="popvault-shared-")
    os.chmod(dict_dir, 0o1777)
    conf = _docs_form().replace(
        DICT_PATH, os.path.join(dict_dir, "shared-mailboxes.db"))
    try:
        with crypt_dovecot(users, extra_conf=conf) as dc:
            yield dc
    finally:
        shutil.rmtree(dict_dir, ignore_errors=True)


MARKS = [b"SHRDAPPND1", b"SHRDCOPY22", b"SHRDENCB33", b"SHRDENCC44",
         b"SHRDPWOW55", b"SHRDOWNR66"]


def _msg(mark):
    return make_message("subject %s" % mark.decode(),
                        body="body %s\r\n" % mark.decode())


def _ok(c, line):
    st, out = c.command(line)
    assert " OK" in st, (line, st, out[-300:])
    return out


def _owner_reads(dc, owner, box, expect):
    """The owner's own session reads every message of box; returns the
    bodies in UID order and checks expect (bytes) are among them."""
    c = dc.imap(owner)
    try:
        _ok(c, "EXAMINE %s" % box)
        out = _ok(c, "FETCH 1:* (UID BODY.PEEK[])")
    finally:
        c.logout()
    bodies = re.split(rb"\r\n(?=\* \d+ FETCH)", out)
    got = [literal(b, b"BODY[]") for b in bodies if b"BODY[]" in b]
    for m in expect:
        # delivered mail starts with LMTP's Return-Path and Received
        assert any(g.endswith(m) for g in got), \
            (owner, box, m[:80], [g[:80] for g in got])
    return got


def _no_marks_anywhere(dc):
    """No marker in any file, but for the plain user's own mail and its
    own INBOX's index (a user without encryption keeps Dovecot's cache;
    2.4 caches the Subject of mail the user saves itself). The plain
    user's private index of the shared folders (Maildir/shared/) is
    checked."""
    own = set(message_files(dc, "plain"))
    own |= {p for p in all_files(os.path.join(dc.home("plain"), "Maildir"))
            if os.path.dirname(p) == os.path.join(dc.home("plain"), "Maildir")
            and os.path.basename(p).startswith("dovecot.index")}
    leaks = []
    for path in all_files(os.path.join(dc.tmp, "home"), dc.mail_temp_dir,
                          os.path.join(dc.tmp, "state")):
        if path in own:
            continue
        with open(path, "rb") as f:
            data = f.read()
        for m in MARKS:
            if m in data:
                leaks.append((path, m))
    assert leaks == [], leaks


def _config(dc):
    with open(dc.config_path) as f:
        conf = f.read()
    return conf


def test_shared_saves_follow_the_owner():
    users = [User("owner", fields=enc_fields()),
             User("plain"),
             User("benc", fields=enc_fields())]
    with _shared_dovecot(users) as dc:
        assert by_version("prefix = shared/%%u/",
                          "prefix = shared/$user/") in _config(dc)
        dc.deliver("owner", _msg(MARKS[5]))
        c = dc.imap("owner")
        try:
            _ok(c, "CREATE Team")
            _ok(c, "SETACL INBOX plain lrswi")
            _ok(c, "SETACL Team plain lrswi")
            _ok(c, "SETACL INBOX benc lrswi")
        finally:
            c.logout()
        # plain user: APPEND into the owner's INBOX, COPY into Team
        appended = _msg(MARKS[0])
        imap_append(dc, "plain", appended, box="shared/owner/INBOX")
        copied = _msg(MARKS[1])
        imap_append(dc, "plain", copied)
        c = dc.imap("plain")
        try:
            _ok(c, "SELECT INBOX")
            _ok(c, "COPY 1 shared/owner/Team")
        finally:
            c.logout()
        # an encrypting user: APPEND and COPY of its own encrypted mail
        benc_app = _msg(MARKS[2])
        imap_append(dc, "benc", benc_app, box="shared/owner/INBOX")
        benc_copy = _msg(MARKS[3])
        dc.deliver("benc", benc_copy)
        c = dc.imap("benc")
        try:
            _ok(c, "SELECT INBOX")
            _ok(c, "COPY 1 shared/owner/INBOX")
        finally:
            c.logout()

        # every file the owner stores is ciphertext ...
        files = message_files(dc, "owner")
        assert len(files) == 5, files
        for path in files:
            with open(path, "rb") as f:
                assert f.read().startswith(MAGIC), path
        _no_marks_anywhere(dc)
        # ... to the owner's key: the owner's own session reads it all
        _owner_reads(dc, "owner", "INBOX",
                     [appended, benc_app, benc_copy])
        _owner_reads(dc, "owner", "Team", [copied])
        rc, out, err = dc.doveadm("popvault", "verify", "-u", "owner",
                                  check=False)
        assert rc == 0, (rc, out, err)
        _no_marks_anywhere(dc)
        assert dc.log_errors() == [], dc.log_errors()


def test_shared_reads_need_the_owners_keys():
    users = [User("owner", fields=enc_fields()),
             User("plain"),
             User("benc", fields=enc_fields()),
             # password mode only: no master key can open these keys
             User("pwown", fields={"popvault_encrypt": "yes"},
                  passdb_fields={"userdb_popvault_key_password": "%w"})]
    with _shared_dovecot(users) as dc:
        first = _msg(MARKS[5])
        dc.deliver("owner", first)
        for owner in ("owner", "pwown"):
            c = dc.imap(owner)
            try:
                # pwown's first login creates its password-locked keys
                _ok(c, "SETACL INBOX plain lrswi")
                _ok(c, "SETACL INBOX benc lrswi")
            finally:
                c.logout()
        pw_mail = _msg(MARKS[4])
        dc.deliver("pwown", pw_mail)
        with open(message_files(dc, "pwown")[0], "rb") as f:
            assert f.read().startswith(MAGIC)

        # master-key owner: other users read the owner's mail
        for reader in ("plain", "benc"):
            c = dc.imap(reader)
            try:
                _ok(c, "EXAMINE shared/owner/INBOX")
                out = _ok(c, "FETCH 1 BODY.PEEK[]")
                # LMTP prepends Return-Path, Delivered-To, Received
                assert literal(out, b"BODY[]").endswith(first), (reader,
                                                                 out)
            finally:
                c.logout()

        # password-only owner: a clean NO for the message, no bytes of it
        for reader in ("plain", "benc"):
            c = dc.imap(reader)
            try:
                _ok(c, "EXAMINE shared/pwown/INBOX")
                st, out = c.command("FETCH 1 BODY.PEEK[]")
                assert st.startswith("a") and " NO " in st, (reader, st)
                assert MAGIC not in out and b"BODY[]" not in out, out
                st, out = c.command("FETCH 1 BODY.PEEK[HEADER]")
                assert " NO " in st, (reader, st)
                # the session goes on
                _ok(c, "NOOP")
            finally:
                c.logout()
        # saving into the password-only owner's INBOX needs only the
        # owner's public key; the owner reads it with the password
        inserted = _msg(MARKS[0])
        imap_append(dc, "plain", inserted, box="shared/pwown/INBOX")
        for path in message_files(dc, "pwown"):
            with open(path, "rb") as f:
                assert f.read().startswith(MAGIC), path
        _owner_reads(dc, "pwown", "INBOX", [pw_mail, inserted])
        _no_marks_anywhere(dc)
        # the failed reads are logged (without secrets), nothing else
        errors = [l for l in dc.log_errors()
                  if "can't unlock the private keys" not in l]
        assert errors == [], errors


def test_shared_reader_password_never_locks_owner_keys():
    # The reader logs in in password mode (%w from the passdb); the owner
    # has no key pair yet. Inserting creates the owner's pair with the
    # owner's own settings: master key only, never the reader's password.
    users = [User("fresh", fields=enc_fields()),
             User("pwread", fields=enc_fields(),
                  passdb_fields={"userdb_popvault_key_password": "%w"})]
    with _shared_dovecot(users) as dc:
        c = dc.imap("fresh")
        try:
            _ok(c, "SETACL INBOX pwread lrswi")
        finally:
            c.logout()
        assert not os.path.exists(os.path.join(dc.home("fresh"),
                                               ".popvault", "keys"))
        inserted = _msg(MARKS[0])
        imap_append(dc, "pwread", inserted, box="shared/fresh/INBOX")
        _, out, _ = dc.doveadm("-f", "tab", "popvault", "key", "list",
                               "-u", "fresh")
        rows = [l.split("\t") for l in out.strip().splitlines()[1:]]
        assert len(rows) == 1 and rows[0][4] == "master", out
        _owner_reads(dc, "fresh", "INBOX", [inserted])
        _no_marks_anywhere(dc)
        assert dc.log_errors() == [], dc.log_errors()

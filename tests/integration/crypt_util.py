"""Helpers for the encryption tests: a master key the mail processes can
read, a Dovecot with encrypting users, file scans and IMAP literals."""

import contextlib
import os
import re
import secrets
import shutil
import tempfile

from harness import dovecot

MAGIC = b"\x89PVLT\r\n\x1a"
HEADER_SIZE = 116
CHUNK = 65536
TAG = 16


@contextlib.contextmanager
def crypt_dovecot(users, **kwargs):
    """A Dovecot whose users (and plugin {}) may name "<MASTER>" as
    popvault_master_key; yields dc with dc.master_key. dc.mail_temp_dir
    (the harness's, in memory) is a directory the tests can scan."""
    keydir = tempfile.mkdtemp(prefix="popvault-keys-")
    os.chmod(keydir, 0o755)
    master = os.path.join(keydir, "master.key")
    with open(master, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    os.chmod(master, 0o644)
    for fields in [u.fields for u in users] + [kwargs.get("plugin", {})]:
        for k, v in list(fields.items()):
            if isinstance(v, str) and "<MASTER>" in v:
                fields[k] = v.replace("<MASTER>", master)
    try:
        with dovecot(users, **kwargs) as dc:
            # only the mail processes' uid reads the master key
            os.chown(master, dc.mail_uid, dc.mail_gid)
            os.chmod(master, 0o600)
            dc.master_key = master
            yield dc
    finally:
        shutil.rmtree(keydir, ignore_errors=True)


def enc_fields(cipher="aes-256-gcm", **extra):
    f = {"popvault_encrypt": "yes", "popvault_cipher": cipher,
         "popvault_master_key": "<<MASTER>"}
    f.update(extra)
    return f


def all_files(*roots):
    for root in roots:
        for d, _, files in os.walk(root):
            for name in files:
                path = os.path.join(d, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    yield path


def message_files(dc, user):
    """Stored message files of a user (maildir new/cur, sdbox u.*,
    mdbox m.*)."""
    out = []
    for path in all_files(dc.home(user)):
        base = os.path.basename(path)
        parent = os.path.basename(os.path.dirname(path))
        if parent in ("new", "cur") or re.match(r"^[um]\.\d+$", base):
            out.append(path)
    return sorted(out)


def new_file(dc, user, before):
    after = set(message_files(dc, user))
    added = sorted(after - set(before))
    assert len(added) == 1, added
    return added[0]


def literal(out, item):
    """The bytes of an IMAP literal following `item` (e.g. b"BODY[]")."""
    m = re.search(re.escape(item) + rb" \{(\d+)\}\r\n", out)
    assert m, (item, out[:300])
    start = m.end()
    return out[start:start + int(m.group(1))]


def fetch_one(dc, user, seq, items):
    c = dc.imap(user)
    try:
        st, _ = c.command("SELECT INBOX")
        assert " OK" in st, st
        return c.command("FETCH %d (%s)" % (seq, items))
    finally:
        c.logout()


def imap_append(dc, user, msg, box="INBOX", flags=None, date=None):
    """APPENDs msg on a session of its own; flags (e.g. "\\Flagged") and
    an internal date ("01-Jan-2020 00:00:00 +0000") are sent when given."""
    c = dc.imap(user)
    try:
        opts = "".join((" (%s)" % flags if flags is not None else "",
                        ' "%s"' % date if date is not None else ""))
        c.cmd("a1 APPEND %s%s {%d}" % (box, opts, len(msg)))
        r = c.readline()
        assert r.startswith("+"), r
        c.send(msg + b"\r\n")
        r = c.readline()
        assert r.startswith("a1 OK"), r
    finally:
        c.logout()


def lmtp_reply(dc, user, message):
    """The LMTP reply to one delivery, on a connection of its own."""
    c = dc.lmtp()
    try:
        return c.deliver(user, message)[user]
    finally:
        c.quit()


def read_until_bye(c, command):
    """Sends an IMAP command whose failure ends the connection and returns
    every line the server sent until it closed."""
    c.cmd(command)
    lines = []
    try:
        while True:
            lines.append(c.readline())
    except EOFError:
        pass
    return lines

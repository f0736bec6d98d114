"""Cache entries made at delivery (issue 18, goal 1; docs/encryption.md,
"Entries made at delivery"). Dovecot parses every message it saves; LMTP
leaves an encrypting user's entry (header and BODYSTRUCTURE), sealed
with the public key, in dovecot.popvault.delivered. The first IMAP
open takes the header and BODYSTRUCTURE from there without reading the
message; every value equals what Dovecot computes from the message,
byte for byte. Damaged entries are never served; expunges remove the
file; nothing in it is readable without the private key."""

import os
import shutil
import struct

from harness import User
from crypt_util import all_files, crypt_dovecot, enc_fields
from crypt_util import message_files
from test_encrypted_cache import (CACHE_BODY, CACHE_FLAGS, COMMANDS, MARKS,
                                  _assert_no_plaintext, _messages, _records,
                                  _restore_messages, _save_messages,
                                  _session, _traced_messages)

DELIVERED = "dovecot.popvault.delivered"
MAGIC = b"PVDLVR01"
USER = "enc"


def _path(dc, user=USER):
    return os.path.join(dc.home(user), "Maildir", DELIVERED)


def _delivered_records(dc, user=USER):
    """[(offset, length)] of the file's whole records."""
    with open(_path(dc, user), "rb") as f:
        data = f.read()
    assert data.startswith(MAGIC)
    out, pos = [], len(MAGIC)
    while len(data) - pos >= 20:
        (length,) = struct.unpack(">I", data[pos + 16:pos + 20])
        if len(data) - pos - 20 < length:
            break
        out.append((pos, length))
        pos += 20 + length
    return out


def _uncached(dc, commands=COMMANDS, user=USER):
    """What Dovecot computes from the stored messages themselves: the
    session runs without the delivered file (kept aside) and without
    popvault's cache, which it fills; both are then put back as they
    were (no cache file, the delivered file)."""
    path = _path(dc, user)
    aside = path + ".aside"
    shutil.copyfile(path, aside)
    os.unlink(path)
    want = _session(dc, user, commands)
    os.unlink(os.path.join(dc.home(user), "Maildir",
                           "dovecot.popvault.cache"))
    os.rename(aside, path)
    return want


def _first_open_from_entries(dc):
    """The first open with every message damaged (so only the entries
    can answer) equals Dovecot's values from the undamaged messages;
    the messages are put back afterwards. Returns those values."""
    want = _uncached(dc)
    saved = _save_messages(dc, USER)
    _corrupt_messages(dc, USER)
    assert _session(dc, USER) == want
    assert dc.log_errors() == [], dc.log_errors()
    _restore_messages(saved)
    return want


def test_first_open_reads_the_entries_made_at_delivery():
    with crypt_dovecot([User(USER, fields=enc_fields())],
                       extra_conf=CACHE_BODY) as dc:
        messages = _messages()
        dc.deliver_many(USER, messages)
        assert len(_delivered_records(dc)) == len(messages)
        _assert_no_plaintext(dc, USER)
        want = _uncached(dc)
        assert MARKS[0] in want[0] and b"* SEARCH 1 2 3 4" in want[8]
        # The messages no longer decrypt: every answer of the first open
        # comes from the entries made at delivery.
        saved = _save_messages(dc, USER)
        _corrupt_messages(dc, USER)
        assert _session(dc, USER) == want
        assert dc.log_errors() == [], dc.log_errors()
        # moved into the encrypted cache; the delivered file is gone
        assert sorted(_records(dc, USER)[1]) == [1, 2, 3, 4]
        assert not os.path.exists(_path(dc))
        assert _session(dc, USER) == want
        _restore_messages(saved)
        assert _session(dc, USER) == want
        _assert_no_plaintext(dc, USER)


def _files_by_uid(dc, user=USER):
    """{uid: path} of the stored messages, from dovecot-uidlist."""
    maildir = os.path.join(dc.home(user), "Maildir")
    with open(os.path.join(maildir, "dovecot-uidlist")) as f:
        lines = f.read().splitlines()[1:]
    names = {}
    for line in lines:
        uid, rest = line.split(" ", 1)
        names[rest.rsplit(":", 1)[1]] = int(uid)
    out = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(maildir, sub)):
            out[names[name.split(":")[0]]] = os.path.join(maildir, sub, name)
    return out


def _corrupt(path):
    """Damages a stored message after its container header, keeping its
    mtime: maildir's INTERNALDATE, which a first open reads from the
    file (the entries do not hold it), must not move with the write."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        for i in range(200, len(data), 97):
            data[i] ^= 0x55
        f.seek(0)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _corrupt_messages(dc, user):
    for path in message_files(dc, user):
        _corrupt(path)


def test_entries_equal_dovecots_values_for_odd_headers():
    """Headers the split form can't keep as they are (no end of header,
    an empty name) are read from the message; bare LF lines, trace
    fields and folding come from the entries. Either way the same as
    Dovecot's own values, in the first open and the second."""
    with crypt_dovecot([User(USER, fields=enc_fields())],
                       extra_conf=CACHE_BODY) as dc:
        messages = _messages() + _traced_messages()
        dc.deliver_many(USER, messages)
        assert len(_delivered_records(dc)) == len(messages)
        want = _uncached(dc)
        # the well-formed ones can only be answered from their entries
        files = _files_by_uid(dc)
        saved = {p: open(p, "rb").read() for p in files.values()}
        for uid in (1, 2, 3, 4):
            _corrupt(files[uid])
        assert _session(dc, USER) == want
        _restore_messages(saved)
        assert sorted(_records(dc, USER)[1]) == list(range(1, 9))
        assert _session(dc, USER) == want
        assert dc.log_errors() == [], dc.log_errors()


def test_entries_with_dovecot_23s_default_cache_fields_too():
    """2.3's default mail_cache_fields (flags): Dovecot parses each
    message it saves all the same, so the entries cost delivery only
    their sealing; the first open reads them there too."""
    with crypt_dovecot([User(USER, fields=enc_fields())],
                       extra_conf=CACHE_FLAGS) as dc:
        dc.deliver_many(USER, _messages())
        assert len(_delivered_records(dc)) == 4
        _first_open_from_entries(dc)


def test_no_entries_for_other_storages():
    """sdbox: popvault does not name the file, so there is no GUID to
    find an entry by; the first open reads the messages."""
    with crypt_dovecot([User(USER, fields=enc_fields())],
                       mail_format="sdbox", extra_conf=CACHE_BODY) as dc:
        dc.deliver_many(USER, _messages())
        found = [p for p in all_files(dc.home(USER))
                 if os.path.basename(p) == DELIVERED]
        assert found == []
        assert _session(dc, USER)[0].count(b" FETCH ") == 4


def test_plain_user_gets_no_entries():
    with crypt_dovecot([User("plain")], extra_conf=CACHE_BODY) as dc:
        dc.deliver_many("plain", _messages())
        assert not os.path.exists(_path(dc, "plain"))


def test_expunge_removes_the_entries():
    """A POP3 user who downloads and deletes leaves no entry of a
    deleted message behind."""
    with crypt_dovecot([User(USER, fields=enc_fields())],
                       extra_conf=CACHE_BODY) as dc:
        dc.deliver_many(USER, _messages())
        assert len(_delivered_records(dc)) == 4
        p = dc.pop3(USER)
        assert p.command("DELE 1").startswith("+OK")
        assert p.quit().startswith("+OK")
        assert not os.path.exists(_path(dc))
        # the rest is read from the messages, as before
        assert _session(dc, USER)[0].count(b" FETCH ") == 3


def test_damaged_entries_are_never_served():
    with crypt_dovecot([User(USER, fields=enc_fields())],
                       extra_conf=CACHE_BODY) as dc:
        dc.deliver_many(USER, _messages())
        want = _uncached(dc)
        records = _delivered_records(dc)
        with open(_path(dc), "r+b") as f:
            data = bytearray(f.read())
            # one record's ciphertext flipped, the last one cut short
            off, length = records[1]
            data[off + 20 + length - 5] ^= 0x01
            off, length = records[3]
            f.seek(0)
            f.truncate()
            f.write(bytes(data[:off + 20 + length // 2]))
        since = dc.log_size()
        assert _session(dc, USER) == want
        dc.wait_log("an entry made at delivery does not open", since=since)
        assert sorted(_records(dc, USER)[1]) == [1, 2, 3, 4]
        assert not os.path.exists(_path(dc))
        assert _session(dc, USER) == want


def test_an_entry_answers_only_for_its_own_message():
    """Records moved between messages (their ids swapped) do not open
    as the other message's: the GUID inside is checked."""
    with crypt_dovecot([User(USER, fields=enc_fields())],
                       extra_conf=CACHE_BODY) as dc:
        dc.deliver_many(USER, _messages()[:2])
        want = _uncached(dc)
        (o1, l1), (o2, l2) = _delivered_records(dc)
        with open(_path(dc), "r+b") as f:
            data = bytearray(f.read())
            id1, id2 = data[o1:o1 + 16], data[o2:o2 + 16]
            data[o1:o1 + 16], data[o2:o2 + 16] = id2, id1
            f.seek(0)
            f.write(bytes(data))
        since = dc.log_size()
        assert _session(dc, USER) == want
        dc.wait_log("an entry made at delivery does not open", since=since)


def test_entries_across_key_rotation():
    """Entries sealed before a key rotation open with the old key, as
    the messages do; those after it with the new one."""
    with crypt_dovecot([User(USER, fields=enc_fields())],
                       extra_conf=CACHE_BODY) as dc:
        messages = _messages()
        dc.deliver_many(USER, messages[:2])
        dc.doveadm("popvault", "key", "rotate", "-u", USER)
        dc.deliver_many(USER, messages[2:])
        assert len(_delivered_records(dc)) == 4
        _first_open_from_entries(dc)


def test_entries_not_yet_used_stay_for_the_next_open():
    """A session that opens only some messages writes the file back
    with the others' entries, and the next open still finds them."""
    with crypt_dovecot([User(USER, fields=enc_fields())],
                       extra_conf=CACHE_BODY) as dc:
        dc.deliver_many(USER, _messages())
        want = _uncached(dc)
        c = dc.imap(USER)
        try:
            assert " OK" in c.command("SELECT INBOX")[0]
            assert " OK" in c.command("UID FETCH 1:2 (BODY.PEEK[HEADER."
                                      "FIELDS (SUBJECT)])")[0]
        finally:
            c.logout()
        assert len(_delivered_records(dc)) == 2
        assert sorted(_records(dc, USER)[1]) == [1, 2]
        files = _files_by_uid(dc)
        saved = {p: open(p, "rb").read() for p in files.values()}
        for uid in (3, 4):
            _corrupt(files[uid])
        assert _session(dc, USER) == want
        assert not os.path.exists(_path(dc))
        _restore_messages(saved)

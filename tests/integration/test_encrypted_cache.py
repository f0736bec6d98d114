"""The encrypted cache (issue 18, goal 1; docs/encryption.md, "Encrypted
cache"): an encrypting user's IMAP folder views are served from
dovecot.popvault.cache, sealed with a key only the private keys open,
and every value equals what Dovecot computes for a plain user with the
same messages, byte for byte, also after the file is removed, tampered
with, the key rotated, the index rebuilt, and encrypt/decrypt."""

import glob
import os
import re
import struct

from harness import User, make_message
from crypt_util import (MAGIC, all_files, crypt_dovecot, enc_fields,
                        message_files)

MARKS = [b"PVCSUBJ7q", b"PVCFROM3k", b"PVCBODY5z", b"PVCHDR8w"]
CACHE = "dovecot.popvault.cache"
CACHE_HDR = 8 + 16 + 16 + 4 + 4
REC_HDR = 4 + 4 + 12
KEY_PW = {"userdb_popvault_key_password": "%w"}

# Each a command of its own (each its own access pattern through
# index-mail), then all together as a webmail client's list view asks.
COMMANDS = [
    "UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (DATE FROM TO SUBJECT "
    "CONTENT-TYPE)])",
    "FETCH 1:* (ENVELOPE BODYSTRUCTURE)",
    "FETCH 1:* (BODY)",
    "FETCH 1:* (RFC822.SIZE INTERNALDATE)",
    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (X-PVC-EXTRA MESSAGE-ID)])",
    "UID SORT (DATE) UTF-8 ALL",
    "UID SORT (REVERSE ARRIVAL) UTF-8 ALL",
    "UID SORT (SIZE) UTF-8 ALL",
    "SEARCH SUBJECT %s" % MARKS[0].decode(),
    "SEARCH SUBJECT nothing-matches-this",
    "SEARCH FROM %s" % MARKS[1].decode(),
    "SEARCH HEADER X-PVC-EXTRA %s" % MARKS[3].decode(),
    "SEARCH SENTBEFORE 1-Jan-2025",
    "SEARCH LARGER 900",
    "UID FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE ENVELOPE "
    "BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (DATE FROM TO SUBJECT "
    "CONTENT-TYPE CC REPLY-TO)])",
]


def _messages():
    s, f, b, h = (m.decode() for m in MARKS)
    plain = make_message("plain %s" % s, sender="%s@example.com" % f,
                         body="one %s\r\n" % b, msgid="<pvc-1@popvault.test>",
                         date="Thu, 01 Jan 2026 10:00:00 +0100")
    multipart = (
        "From: =?UTF-8?B?w4RsaWNl?= <%s@example.com>\r\n"
        "To: a@example.com, \"B, b\" <b@example.com>\r\n"
        "Cc: c@example.com\r\n"
        "Subject: =?UTF-8?Q?f=C3=B6lded?= %s\r\n"
        "  continued line\r\n"
        "Date: Mon, 15 Dec 2025 23:59:59 -0800\r\n"
        "Message-ID: <pvc-2@popvault.test>\r\n"
        "X-PVC-Extra: %s\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"XyZ\"\r\n"
        "\r\n"
        "preamble\r\n"
        "--XyZ\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n"
        "\r\n"
        "two %s =C3=A4\r\n"
        "--XyZ\r\n"
        "Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
        "Content-Disposition: attachment; filename=\"a.bin\"\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n"
        "--XyZ\r\n"
        "Content-Type: message/rfc822\r\n"
        "\r\n"
        "From: inner@example.com\r\n"
        "Subject: inner %s\r\n"
        "\r\n"
        "inner body\r\n"
        "--XyZ--\r\n" % (f, s, h, b, s)).encode()
    no_date = ("From: %s@example.com\r\nSubject: undated %s\r\n"
               "Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
               "<p>three %s</p>\r\n" % (f, s, b)).encode()
    old = make_message("old %s" % s, sender="x@example.com",
                       body=("four %s\r\n" % b) * 60,
                       date="Sun, 01 Jan 2023 00:00:00 +0000",
                       msgid="<pvc-4@popvault.test>",
                       extra_headers=("X-PVC-Extra: %s" % h,))
    return [plain, multipart, no_date, old]


TRACE = b"PVCTRACE6m"

# The fields a split entry does not keep (trace, signatures) and odd
# header lines the split must reproduce as Dovecot's header filter does.
TRACE_COMMANDS = [
    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (RECEIVED SUBJECT)])",
    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (DKIM-SIGNATURE)])",
    "SEARCH HEADER Received %s" % TRACE.decode(),
    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (X-ODD X-EMPTY X-DUP SUBJECT "
    "NOCOLON)] ENVELOPE)",
    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO)] BODY)",
    "SEARCH HEADER X-Dup second",
]


def _traced_messages():
    s, t = MARKS[0].decode(), TRACE.decode()
    traced = (
        "Received: from mx1.example.org (mx1 [192.0.2.1])\r\n"
        "\tby mail.popvault.test; %s Thu, 01 Jan 2026 10:00:00 +0100\r\n"
        "DKIM-Signature: v=1; a=rsa-sha256; d=example.org;\r\n"
        "\tb=%sAAAA\r\n"
        "From: a@example.org\r\n"
        "received: from mx2 by mx1; %s\r\n"
        "Subject : spaced %s\r\n"
        "X-Empty:\r\n"
        "X-Dup: first\r\n"
        "X-Odd:\tvalue\r\n"
        "  folded\r\n"
        "X-DUP: second\r\n"
        "To: b@example.org\r\n"
        "\r\n"
        "body\r\n" % (t, t, t, s)).encode()
    # no end of header: kept raw, the filter adds the empty line
    headers_only = ("From: c@example.org\r\nSubject: bare %s\r\n"
                    "Received: by mx3; %s" % (s, t)).encode()
    bare_lf = ("From: d@example.org\nReceived: by mx4; %s\n"
               "Subject: lf %s\nX-Dup: second\n\nbody\n" % (t, s)).encode()
    # a line without colon, an empty field name: kept raw too
    empty_name = ("From: e@example.org\r\n: nameless\r\nNoColon\r\n"
                  "Subject: nameless %s\r\nReceived: by mx5; %s\r\n\r\n"
                  "body\r\n" % (s, t)).encode()
    return [traced, headers_only, bare_lf, empty_name]


def _append(dc, user, messages, box="INBOX"):
    c = dc.imap(user)
    try:
        if box != "INBOX":
            assert " OK" in c.command("CREATE %s" % box)[0]
        for i, m in enumerate(messages):
            c.cmd('a0 APPEND %s "%02d-Feb-2026 10:00:00 +0000" {%d}'
                  % (box, i % 28 + 1, len(m)))
            assert c.readline().startswith("+")
            c.send(m + b"\r\n")
            assert c.readline().startswith("a0 OK")
    finally:
        c.logout()


def _session(dc, user, commands=COMMANDS, box="INBOX"):
    """Every command's reply in one IMAP session (a folder open)."""
    c = dc.imap(user)
    try:
        st, _ = c.command("SELECT %s" % box)
        assert " OK" in st, st
        out = []
        for cmd in commands:
            st, reply = c.command(cmd)
            assert " OK" in st, (cmd, st, reply)
            # \Recent goes to the first session after APPEND; the
            # timings in the tagged reply vary
            reply = reply.replace(b"\\Recent", b"")
            out.append(re.sub(rb"completed \([^)]*\)", b"", reply))
        return out
    finally:
        c.logout()


def _cache_path(dc, user, box="INBOX"):
    maildir = os.path.join(dc.home(user), "Maildir")
    return os.path.join(maildir if box == "INBOX" else
                        os.path.join(maildir, "." + box), CACHE)


def _records(dc, user):
    """(header, [uid, ...]) of the user's cache file."""
    with open(_cache_path(dc, user), "rb") as f:
        data = f.read()
    uids, pos = [], CACHE_HDR
    while pos < len(data):
        uid, length = struct.unpack(">II", data[pos:pos + 8])
        uids.append(uid)
        pos += REC_HDR + length
    return data[:CACHE_HDR], uids


def _corrupt_messages(dc, user):
    """Damages every stored message after the container header: only
    the cache can answer for them from now on."""
    for path in message_files(dc, user):
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            assert data.startswith(MAGIC)
            for i in range(200, len(data), 97):
                data[i] ^= 0x55
            f.seek(0)
            f.write(data)


def _assert_no_plaintext(dc, user):
    leaks = []
    for path in all_files(dc.home(user), dc.mail_temp_dir):
        with open(path, "rb") as f:
            data = f.read()
        leaks += [(path, m) for m in MARKS + [TRACE] if m in data]
    assert leaks == [], leaks
    assert not [p for p in all_files(dc.home(user))
                if p.endswith("dovecot.index.cache")]


def _users():
    return [User("plain"), User("enc", fields=enc_fields())]


def test_cache_serves_every_field_as_dovecot_computes_it():
    with crypt_dovecot(_users()) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, _messages())
        want = _session(dc, "plain")
        assert MARKS[0] in want[0] and b"* SEARCH 1 2 3 4" in want[8]
        # first open fills the cache, the second reads it
        assert _session(dc, "enc") == want
        _, uids = _records(dc, "enc")
        assert sorted(uids) == [1, 2, 3, 4]
        assert _session(dc, "enc") == want
        _assert_no_plaintext(dc, "enc")
        # without the file: decrypted again, the same values, rebuilt
        os.unlink(_cache_path(dc, "enc"))
        assert _session(dc, "enc") == want
        assert sorted(_records(dc, "enc")[1]) == [1, 2, 3, 4]
        # served from the cache alone: the messages no longer decrypt
        _corrupt_messages(dc, "enc")
        assert _session(dc, "enc") == want
        assert dc.log_errors() == [], dc.log_errors()
        _assert_no_plaintext(dc, "enc")


# popvault-crypt-cache.c decrypts opened entries into a window of this
# size, used again from its start when full
OPEN_WINDOW = 64 * 1024


def test_entries_beyond_the_open_window_are_opened_again():
    """A folder whose entries are more than popvault keeps decrypted at
    once: every command goes round the window, the entries dropped on
    the way are opened again when asked for, and every value still
    equals Dovecot's, also when only the cache can answer."""
    pad = ["X-PVC-Pad-%02d: %s" % (j, "p%02d" % j * 30) for j in range(50)]
    messages = [
        make_message("window %d %s" % (i, MARKS[0].decode()),
                     sender="w%d@example.com" % i, body="body %d\r\n" % i,
                     msgid="<pvw-%d@popvault.test>" % i,
                     date="Thu, %02d Jan 2026 10:%02d:00 +0100" % (
                         i % 28 + 1, i * 7 % 60),
                     extra_headers=pad)
        for i in range(200)]
    with crypt_dovecot(_users()) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, messages)
        want = _session(dc, "plain")
        assert _session(dc, "enc") == want
        # the sealed entries (each about its plaintext's size) fill the
        # window at least eight times per command
        assert os.path.getsize(_cache_path(dc, "enc")) > 8 * OPEN_WINDOW
        assert _session(dc, "enc") == want
        _corrupt_messages(dc, "enc")
        assert _session(dc, "enc") == want
        assert dc.log_errors() == [], dc.log_errors()
        _assert_no_plaintext(dc, "enc")


def test_trace_fields_are_answered_from_the_message():
    with crypt_dovecot(_users()) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, _traced_messages())
        want = _session(dc, "plain", TRACE_COMMANDS)
        assert TRACE in want[0] and b"* SEARCH 1 2 3 4\r\n" in want[2]
        assert b"X-Odd:\tvalue\r\n  folded\r\n" in want[3]
        assert _session(dc, "enc", TRACE_COMMANDS) == want
        assert _session(dc, "enc", TRACE_COMMANDS) == want
        _assert_no_plaintext(dc, "enc")
        with open(_cache_path(dc, "enc"), "rb") as f:
            assert TRACE not in f.read()
        # the messages no longer decrypt: the kept fields still come
        # from the cache, Received only ever from the message
        _corrupt_messages(dc, "enc")
        kept = _session(dc, "enc", TRACE_COMMANDS[3:])
        assert _untagged(kept) == _untagged(want[3:])
        c = dc.imap("enc")
        try:
            assert " OK" in c.command("SELECT INBOX")[0]
            st, _ = c.command("FETCH 1 (BODY.PEEK[HEADER.FIELDS "
                              "(RECEIVED)])")
            assert " NO " in st, st
        finally:
            c.logout()


def _untagged(replies):
    return [re.sub(rb"(^|\n)a\d+ ", b"\\1", r) for r in replies]


def test_tampered_cache_is_never_served():
    with crypt_dovecot(_users()) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, _messages())
        want = _session(dc, "plain")
        _session(dc, "enc")
        path = _cache_path(dc, "enc")
        with open(path, "rb") as f:
            data = bytearray(f.read())
        # a byte of the second record's ciphertext
        first_len = struct.unpack(">I", data[CACHE_HDR + 4:CACHE_HDR + 8])[0]
        second = CACHE_HDR + REC_HDR + first_len
        data[second + REC_HDR + 5] ^= 1
        # and a record moved to another uid
        data[CACHE_HDR:CACHE_HDR + 4] = struct.pack(">I", 99)
        with open(path, "wb") as f:
            f.write(data)
        assert _session(dc, "enc") == want
        dc.wait_log(r"does not authenticate")
        # rebuilt: every message's entry authenticates again
        assert sorted(_records(dc, "enc")[1]) == [1, 2, 3, 4]
        # a file that is no cache file at all
        with open(path, "wb") as f:
            f.write(b"garbage" * 100)
        assert _session(dc, "enc") == want
        assert sorted(_records(dc, "enc")[1]) == [1, 2, 3, 4]
        _corrupt_messages(dc, "enc")
        assert _session(dc, "enc") == want


def test_a_cache_file_answers_only_in_its_own_folder():
    """A file copied into another folder of the same user, its header
    made to match there (the same key generation, place and
    UIDVALIDITY in the clear), still never answers for that folder's
    messages: each record's associated data names its own place."""
    with crypt_dovecot(_users()) as dc:
        other = [make_message("other %d %s" % (i, MARKS[0].decode()),
                              sender="o%d@example.com" % i,
                              date="Fri, 02 Jan 2026 1%d:00:00 +0000" % i)
                 for i in range(4)]
        for u in ("plain", "enc"):
            _append(dc, u, _messages())
            _append(dc, u, other, box="Other")
        # the same UIDVALIDITY in both folders: only the place differs
        c = dc.imap("enc")
        try:
            st, reply = c.command("STATUS INBOX (UIDVALIDITY)")
            assert " OK" in st, st
        finally:
            c.logout()
        uidvalidity = re.search(rb"UIDVALIDITY (\d+)", reply).group(1)
        dc.doveadm("mailbox", "update", "-u", "enc", "--uid-validity",
                   uidvalidity.decode(), "Other")
        want = _session(dc, "plain", box="Other")
        assert _session(dc, "enc") == _session(dc, "plain")
        assert _session(dc, "enc", box="Other") == want
        with open(_cache_path(dc, "enc", "Other"), "rb") as f:
            header = f.read()[:CACHE_HDR]
        with open(_cache_path(dc, "enc"), "rb") as f:
            inbox = f.read()
        # the same generation and UIDVALIDITY, another place
        assert inbox[:24] == header[:24] and inbox[40:48] == header[40:48]
        assert inbox[24:40] != header[24:40]
        with open(_cache_path(dc, "enc", "Other"), "wb") as f:
            f.write(header + inbox[CACHE_HDR:])
        assert _session(dc, "enc", box="Other") == want
        dc.wait_log(r"does not authenticate")
        # rebuilt with the folder's own records
        assert _session(dc, "enc", box="Other") == want
        _corrupt_messages(dc, "enc")
        assert _session(dc, "enc", box="Other") == want


def test_expunged_messages_leave_the_cache():
    with crypt_dovecot(_users()) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, _messages())
        _session(dc, "enc")
        for u in ("plain", "enc"):
            dc.imap_expunge(u, "2")
        assert sorted(_records(dc, "enc")[1]) == [1, 3, 4]
        assert _session(dc, "enc") == _session(dc, "plain")


def test_key_rotation_starts_a_new_generation():
    with crypt_dovecot(_users()) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, _messages())
        want = _session(dc, "plain")
        _session(dc, "enc")
        hdr_before, _ = _records(dc, "enc")
        keys = os.path.join(dc.home("enc"), ".popvault", "keys")
        with open(os.path.join(keys, "cache-key"), "rb") as f:
            sealed_before = f.read()
        assert sealed_before.startswith(MAGIC)
        dc.doveadm("popvault", "key", "rotate", "-u", "enc")
        assert _session(dc, "enc") == want
        hdr_after, uids = _records(dc, "enc")
        with open(os.path.join(keys, "cache-key"), "rb") as f:
            sealed_after = f.read()
        # sealed to the new key pair, a new key: another generation id
        assert sealed_after[8:40] != sealed_before[8:40]
        assert hdr_after[8:24] != hdr_before[8:24]
        assert sorted(uids) == [1, 2, 3, 4]
        assert _session(dc, "enc") == want


def _uid1_file(maildir):
    with open(os.path.join(maildir, "dovecot-uidlist")) as f:
        for line in f.read().splitlines()[1:]:
            if line.split(" ", 1)[0] == "1":
                name = line.split(":", 1)[1]
                return glob.glob(os.path.join(maildir, "cur", name + "*")) \
                    + glob.glob(os.path.join(maildir, "new", name + "*"))
    return []


def test_index_rebuild_and_uidvalidity_change():
    with crypt_dovecot(_users()) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, _messages())
        _session(dc, "enc")
        dc.doveadm("force-resync", "-u", "enc", "INBOX")
        assert _session(dc, "enc") == _session(dc, "plain")
        # The uidlist and index lost, and the message of UID 1 gone: the
        # UIDs now name other messages under a new UIDVALIDITY. The
        # cache file stays and must not answer for them.
        hdr_before, _ = _records(dc, "enc")
        dc.stop()
        maildir = os.path.join(dc.home("enc"), "Maildir")
        files = _uid1_file(maildir)
        assert len(files) == 1, files
        os.unlink(files[0])
        for f in glob.glob(os.path.join(maildir, "dovecot.index*")) + \
                [os.path.join(maildir, "dovecot-uidlist")]:
            os.unlink(f)
        dc.start_again()
        got = _session(dc, "enc")
        hdr_after, uids = _records(dc, "enc")
        assert hdr_after[40:44] != hdr_before[40:44]
        assert sorted(uids) == [1, 2, 3]
        # the message that was UID 1 is nowhere
        assert b"plain " + MARKS[0] not in b"".join(got)
        assert b"* SEARCH 1 2 3\r\n" in got[8]
        os.unlink(_cache_path(dc, "enc"))
        assert _session(dc, "enc") == got
        assert _session(dc, "enc") == got


def test_encrypt_and_decrypt_keep_the_cache_right():
    users = [User("plain"),
             User("mix", fields={"popvault_master_key": "<<MASTER>"})]
    with crypt_dovecot(users) as dc:
        for u in ("plain", "mix"):
            _append(dc, u, _messages())
        dc.doveadm("popvault", "key", "generate", "-u", "mix")
        want = _session(dc, "plain")
        # keys exist: Dovecot's cache is off, the encrypted one on
        assert _session(dc, "mix") == want
        assert os.path.exists(_cache_path(dc, "mix"))
        dc.doveadm("-o", "plugin/popvault_encrypt=yes", "popvault",
                   "encrypt", "-u", "mix")
        assert all(open(p, "rb").read().startswith(MAGIC)
                   for p in message_files(dc, "mix"))
        got = _session(dc, "mix")
        got2 = _session(dc, "mix")
        _, uids = _records(dc, "mix")
        assert len(uids) == 4 and min(uids) > 4, uids
        dc.doveadm("popvault", "decrypt", "-u", "mix")
        got3 = _session(dc, "mix")
        # new UIDs: compare without them
        for a in (got, got2, got3):
            assert _strip_uids(a) == _strip_uids(want)
        _, uids = _records(dc, "mix")
        assert len(uids) == 4 and min(uids) > 8, uids


def _strip_uids(replies):
    return [re.sub(rb"UID \d+|\* (SORT|SEARCH)[ \d]*", b"", r)
            for r in replies]


def test_password_mode_delivery_needs_only_the_public_key():
    users = [User("pw", "Pw-cache-9931", {"popvault_encrypt": "yes"},
                  passdb_fields=KEY_PW)]
    with crypt_dovecot(users) as dc:
        _append(dc, "pw", _messages()[:2])
        _session(dc, "pw")
        # LMTP has no password: only the public key
        dc.deliver("pw", _messages()[2])
        got = _session(dc, "pw")
        assert sorted(_records(dc, "pw")[1]) == [1, 2, 3]
        assert _session(dc, "pw") == got
        os.unlink(_cache_path(dc, "pw"))
        assert _session(dc, "pw") == got
        _assert_no_plaintext(dc, "pw")


# Only the list view's header fetch: fills entries without BODYSTRUCTURE
HEADER_ONLY = COMMANDS[:1]
# The structure asked for before anything else of an entry
BODY_FIRST = [
    "FETCH 1:* (BODYSTRUCTURE)",
    "FETCH 1:* (BODY)",
    "FETCH 1:* (ENVELOPE BODYSTRUCTURE)",
]


def _save_messages(dc, user):
    return {p: open(p, "rb").read() for p in message_files(dc, user)}


def _restore_messages(saved):
    for path, data in saved.items():
        with open(path, "wb") as f:
            f.write(data)


# Dovecot's cache fields: 2.3's default, and with BODYSTRUCTURE as in
# 2.4's default (written in each host's syntax by the harness)
CACHE_FLAGS = "mail_cache_fields = flags\n"
CACHE_BODY = "mail_cache_fields = flags imap.bodystructure\n"


def test_header_fetch_fills_without_parsing_the_body():
    """The first list view's header fetch decrypts each message once
    for its header, dates and sizes; BODYSTRUCTURE is computed (a second
    decryption) only when a command asks for it, and the completed entry
    supersedes the first in the file. (Where Dovecot's mail_cache_fields
    do not name BODYSTRUCTURE: 2.3's default.)"""
    with crypt_dovecot(_users(), extra_conf=CACHE_FLAGS) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, _messages())
        want = _session(dc, "plain")
        want_body = _session(dc, "plain", BODY_FIRST)
        assert _session(dc, "enc", HEADER_ONLY) == want[:1]
        assert sorted(_records(dc, "enc")[1]) == [1, 2, 3, 4]
        # The header came from the entries; the structure is not in them
        # yet and needs the (now undecryptable) message.
        saved = _save_messages(dc, "enc")
        _corrupt_messages(dc, "enc")
        assert _session(dc, "enc", HEADER_ONLY) == want[:1]
        c = dc.imap("enc")
        try:
            assert " OK" in c.command("SELECT INBOX")[0]
            st, _ = c.command("FETCH 1 (BODYSTRUCTURE)")
            assert " NO " in st, st
        finally:
            c.logout()
        _restore_messages(saved)
        # asked first after the header fill: the same answers as plain
        assert _session(dc, "enc", BODY_FIRST) == want_body
        # one record per message: the completed ones replaced the others
        assert sorted(_records(dc, "enc")[1]) == [1, 2, 3, 4]
        # everything is in the entries now
        _corrupt_messages(dc, "enc")
        assert _session(dc, "enc") == want
        assert _session(dc, "enc", BODY_FIRST) == want_body
        _assert_no_plaintext(dc, "enc")


def test_body_filled_ahead_where_dovecot_caches_it():
    """With BODYSTRUCTURE in mail_cache_fields (2.4's default: Dovecot
    parses every message for it at delivery) the header fetch's fill
    takes it too, with the same decryption."""
    with crypt_dovecot(_users(), extra_conf=CACHE_BODY) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, _messages())
        want = _session(dc, "plain")
        want_body = _session(dc, "plain", BODY_FIRST)
        assert _session(dc, "enc", HEADER_ONLY) == want[:1]
        _corrupt_messages(dc, "enc")
        assert _session(dc, "enc", BODY_FIRST) == want_body
        assert _session(dc, "enc") == want
        assert sorted(_records(dc, "enc")[1]) == [1, 2, 3, 4]
        _assert_no_plaintext(dc, "enc")


def test_header_only_entries_across_rotation_and_rebuild():
    with crypt_dovecot(_users(), extra_conf=CACHE_FLAGS) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, _messages())
        want = _session(dc, "plain")
        want_body = _session(dc, "plain", BODY_FIRST)
        _session(dc, "enc", HEADER_ONLY)
        hdr_before, _ = _records(dc, "enc")
        dc.doveadm("popvault", "key", "rotate", "-u", "enc")
        assert _session(dc, "enc", BODY_FIRST) == want_body
        hdr_after, uids = _records(dc, "enc")
        assert hdr_after[8:24] != hdr_before[8:24]
        assert sorted(uids) == [1, 2, 3, 4]
        # header-only entries again (the file rebuilt), then a resync
        os.unlink(_cache_path(dc, "enc"))
        assert _session(dc, "enc", HEADER_ONLY) == want[:1]
        dc.doveadm("force-resync", "-u", "enc", "INBOX")
        assert _session(dc, "enc", BODY_FIRST) == want_body
        assert sorted(_records(dc, "enc")[1]) == [1, 2, 3, 4]
        _corrupt_messages(dc, "enc")
        assert _session(dc, "enc") == want


# Date headers index-mail reads in its own way (mail_get_date(): the
# first Date field, unfolded as mail_get_first_header() gives it, 0 when
# invalid, the time in 32 bits); the cache takes the time from its
# split header and must agree. (No Date at all: _messages().) Nine, as
# _append() dates them.
DATES = [
    "Date: Tue, 03 Mar 2026 10:00:00 +0500",
    "Date: Wed, 04 Mar 2026\r\n 11:00:00 -0300",
    "date : Thu, 05 Mar 2026 12:00:00 +0000",
    "Date: Fri, 06 Mar 2026 13:00:00 +0100\r\n"
    "Date: Mon, 01 Jan 2024 00:00:00 +0000",
    "Date: not a date at all",
    "Date: Sat, 01 Jan 2150 00:00:00 +0000",
    "Date: Mon, 01 Jan 1900 00:00:00 +0000",
    "Date:",
    "Date:\t Sun, 08 Mar 2026 09:00:00 -1100",
]

DATE_COMMANDS = [
    "UID SORT (DATE) UTF-8 ALL",
    "UID SORT (REVERSE DATE) UTF-8 ALL",
    "SEARCH SENTBEFORE 1-Jan-2025",
    "SEARCH SENTSINCE 1-Jan-2100",
    "SEARCH SENTON 4-Mar-2026",
    "SEARCH SENTON 6-Mar-2026",
    "SEARCH SENTON 8-Mar-2026",
    "SEARCH SENTON 1-Jan-1900",
    "FETCH 1:* (ENVELOPE)",
]


def test_sent_dates_equal_dovecots_for_odd_date_headers():
    msgs = [("From: d%d@example.com\r\nSubject: date %d %s\r\n%s\r\n"
             "\r\nbody\r\n" % (i, i, MARKS[0].decode(), d)).encode()
            for i, d in enumerate(DATES)]
    with crypt_dovecot(_users()) as dc:
        for u in ("plain", "enc"):
            _append(dc, u, msgs)
        want = _session(dc, "plain", DATE_COMMANDS)
        assert b"* SEARCH 2\r\n" in want[4], want[4]
        # filled by the sort (header entries), then read from the file
        assert _session(dc, "enc", DATE_COMMANDS) == want
        assert _session(dc, "enc", DATE_COMMANDS) == want
        # filled by the header fetch
        os.unlink(_cache_path(dc, "enc"))
        got = _session(dc, "enc", HEADER_ONLY + DATE_COMMANDS)[1:]
        assert _untagged(got) == _untagged(want)
        _assert_no_plaintext(dc, "enc")

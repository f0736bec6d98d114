"""Environment faults during encrypted delivery and reading (issue 8):
a full disk, an unwritable mail_temp_dir, an unreadable master key. Each
must fail the one operation with a temporary error and a log line naming
the user and the cause, leave no partial or plaintext file behind, change
no stored mail, and work again once the fault is gone."""

import contextlib
import hashlib
import os
import re
import subprocess
import tempfile

from harness import User, make_message
from crypt_util import MAGIC, all_files, crypt_dovecot, enc_fields, \
    message_files

USER = "envf"
# in every test message: found in a file means plaintext on disk
MARK = b"ENVFAULT-PLAINTEXT-MARKER"


def _message(subject, size):
    line = MARK + b" " + b"x" * 60 + b"\r\n"
    return make_message(subject, body=line * (size // len(line) + 1))


def _lmtp(dc, msg):
    c = dc.lmtp()
    try:
        return c.deliver(USER, msg)[USER]
    finally:
        c.quit()


def _state(dc):
    """{maildir base name: (flags, sha256)} of the stored messages."""
    state = {}
    for path in message_files(dc, USER):
        base, _, flags = os.path.basename(path).partition(":2,")
        with open(path, "rb") as f:
            state[base] = (flags, hashlib.sha256(f.read()).hexdigest())
    return state


def _plaintext_files(*roots):
    hits = []
    for path in all_files(*roots):
        with open(path, "rb") as f:
            if MARK in f.read():
                hits.append(path)
    return hits


def _maildir_tmp(dc):
    tmp = os.path.join(dc.home(USER), "Maildir", "tmp")
    return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []


def _read_all(dc, originals):
    p = dc.pop3(USER)
    try:
        count, _ = p.stat()
        assert count == len(originals), (count, len(originals))
        for i, m in enumerate(originals):
            tail = m if m.endswith(b"\r\n") else m + b"\r\n"
            assert p.retr(i + 1).endswith(tail), i
    finally:
        p.quit()


@contextlib.contextmanager
def _small_tmpfs(size):
    """A tmpfs of `size` for the homes: a real ENOSPC, not a simulated
    one. Needs root (the suite runs as root, like CI)."""
    mnt = tempfile.mkdtemp(prefix="popvault-full-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755"
                        % size, "popvault-test", mnt], capture_output=True,
                       text=True)
    assert r.returncode == 0, "can't mount a tmpfs: %s" % r.stderr
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=False)
        os.rmdir(mnt)


def _fill(path, leave):
    """Fills the filesystem of path until `leave` bytes are free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = os.path.join(path, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_disk_full_during_encrypted_delivery():
    with _small_tmpfs("4m") as homes:
        user = User(USER, fields=enc_fields(popvault_after_retr="keep"))
        with crypt_dovecot([user], home_root=homes) as dc:
            originals = [_message("before", 3000)]
            assert _lmtp(dc, originals[0]).startswith("250")
            state = _state(dc)
            log_at = dc.log_size()

            filler = _fill(homes, 64 * 1024)
            # 512 KiB cannot fit in 64 KiB: the save fails part-way
            r = _lmtp(dc, _message("too big", 512 * 1024))
            assert r.startswith("4"), r
            # (the log process writes asynchronously: wait for the line)
            dc.wait_log(r"lmtp\(%s\).*No space left on device" % USER,
                        since=log_at)
            # no partial message: nothing new stored, maildir tmp/ empty,
            # and no plaintext anywhere on the full filesystem
            assert _state(dc) == state
            assert _maildir_tmp(dc) == []
            assert _plaintext_files(homes, dc.mail_temp_dir) == []

            # space back: the next delivery works and everything reads
            os.unlink(filler)
            originals.append(_message("after", 512 * 1024))
            assert _lmtp(dc, originals[-1]).startswith("250")
            for path in message_files(dc, USER):
                with open(path, "rb") as f:
                    assert f.read(8) == MAGIC, path
            _read_all(dc, originals)


@contextlib.contextmanager
def _read_only(path):
    """path overmounted by an empty read-only tmpfs: EROFS even for root
    (LMTP buffers DATA before it drops root, so chmod would not do)."""
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k",
                        "popvault-ro", path], capture_output=True, text=True)
    assert r.returncode == 0, "can't mount a tmpfs: %s" % r.stderr
    try:
        yield
    finally:
        subprocess.run(["umount", path], check=False)


def _imap_append(dc, msg):
    c = dc.imap(USER)
    try:
        c.send(b"a1 APPEND INBOX {%d}\r\n" % len(msg))
        assert c.readline().startswith("+"), "no continuation"
        c.send(msg + b"\r\n")
        while True:
            line = c.readline()
            if line.startswith("a1 "):
                return line
    finally:
        c.logout()


def test_mail_temp_dir_unwritable():
    user = User(USER, fields=enc_fields())
    with crypt_dovecot([user]) as dc:
        originals = [_message("small", 2000)]
        assert _lmtp(dc, originals[0]).startswith("250")
        state = _state(dc)
        # large messages are buffered in mail_temp_dir (LMTP DATA, IMAP
        # APPEND): neither may be lost, stored half, or left in plaintext
        big = [_message("big lmtp", 2 * 1024 * 1024),
               _message("big append", 2 * 1024 * 1024)]
        with _read_only(dc.mail_temp_dir):
            log_at = dc.log_size()
            r_lmtp = _lmtp(dc, big[0])
            r_imap = _imap_append(dc, big[1])
            # the fault was hit: Dovecot tried the temp dir and said why
            # it could not (LMTP then keeps the data in memory, goes on)
            dc.wait_log(r"lmtp\(\d+\): Error: .*%s.* failed: Read-only "
                        r"file system" % re.escape(dc.mail_temp_dir),
                        since=log_at)
        accepted = []
        for r, m, ok in ((r_lmtp, big[0], "250"), (r_imap, big[1], "a1 OK")):
            if r.startswith(ok):
                accepted.append(m)
            else:
                # refused: a temporary error, never a lost message
                assert r.startswith("4") or r.startswith("a1 NO"), r
        if not accepted:
            assert _state(dc) == state
        assert _plaintext_files(dc.home(USER), dc.mail_temp_dir) == []
        for path in message_files(dc, USER):
            with open(path, "rb") as f:
                assert f.read(8) == MAGIC, path
        # writable again: what was refused is delivered now
        for m in big:
            if m not in accepted:
                assert _lmtp(dc, m).startswith("250")
        _read_all(dc, originals + accepted +
                  [m for m in big if m not in accepted])


def test_master_key_unreadable():
    # after_retr=delete: a session that could read would change the mailbox
    user = User(USER, fields=enc_fields(popvault_after_retr="delete"))
    with crypt_dovecot([user]) as dc:
        originals = [_message("one", 2000), _message("two", 70000)]
        for m in originals:
            assert _lmtp(dc, m).startswith("250")
        state = _state(dc)
        os.chmod(dc.master_key, 0o000)
        try:
            log_at = dc.log_size()
            r = _lmtp(dc, _message("refused", 1000))
            assert r.startswith("451"), r
            p = dc.pop3()
            assert p.command("USER " + USER).startswith("+OK")
            r = p.command("PASS " + dc.users[USER].password)
            assert r.startswith("-ERR [SYS/TEMP]"), r
            p.close()
            for proc in ("lmtp", "pop3"):
                dc.wait_log(r"%s\(.*popvault: user %s: crypt: popvault_master_key: "
                            r"open\(%s\) failed: Permission denied"
                            % (proc, USER, re.escape(dc.master_key)),
                            since=log_at)
            assert _state(dc) == state
        finally:
            os.chmod(dc.master_key, 0o600)
        # readable again: the session reads and applies its policy
        p = dc.pop3(USER)
        try:
            for i, m in enumerate(originals):
                assert p.retr(i + 1).endswith(m + b"\r\n" if not
                                              m.endswith(b"\r\n") else m)
        finally:
            p.quit()
        assert message_files(dc, USER) == []

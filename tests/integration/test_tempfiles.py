"""No plaintext of an encrypting user in Dovecot's temporary files (issue
18): mail_temp_dir must be in memory (tmpfs) for users with encrypted mail,
a disk-backed one refuses them unless popvault_allow_disk_temp=yes. Proved
on raw ext4 images: the mail root and a disk mail_temp_dir are loop-mounted
file systems made here, scanned for markers while each transfer is held
open mid-way (a state: the spool file exists and holds the bytes) and again
after unmounting. Needs root (mount)."""

import base64
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time

from harness import (MEMORY_TMP, HarnessError, User, by_version,
                     make_message)
from crypt_util import MAGIC, crypt_dovecot, enc_fields, imap_append, message_files


class Ext4Image:
    """A fresh ext4 file system in an image file, loop-mounted at .mnt
    (mode 1777); unmount() it to scan the raw image at rest. Unmounted
    and removed at the end of the with block."""

    def __init__(self, size_mb):
        if os.getuid() != 0:
            raise HarnessError("loop mounts need root")
        self.dir = tempfile.mkdtemp(prefix="popvault-img-")
        os.chmod(self.dir, 0o755)
        self.img = os.path.join(self.dir, "fs.img")
        self.mnt = os.path.join(self.dir, "mnt")
        self.size_mb = size_mb
        self.mounted = False

    def __enter__(self):
        try:
            os.mkdir(self.mnt)
            with open(self.img, "wb") as f:
                f.truncate(self.size_mb << 20)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E",
                            "lazy_itable_init=0,lazy_journal_init=0",
                            self.img], check=True, capture_output=True)
            subprocess.run(["mount", "-o", "loop", self.img, self.mnt],
                           check=True, capture_output=True)
            self.mounted = True
            os.chmod(self.mnt, 0o1777)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def unmount(self):
        if self.mounted:
            subprocess.run(["umount", self.mnt], check=True)
            self.mounted = False

    def __exit__(self, *exc):
        self.unmount()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def has(self, marker):
        """Whether the raw image holds marker; flushes the file system
        first while it is mounted."""
        if self.mounted:
            os.sync()
        with open(self.img, "rb") as f:
            return (marker if isinstance(marker, bytes)
                    else marker.encode()) in f.read()


def open_temp_files(temp_dir):
    """Sizes of the unlinked Dovecot temp files in temp_dir that some
    process holds open (found through /proc/<pid>/fd)."""
    sizes = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fd_dir = "/proc/%s/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            path = os.path.join(fd_dir, fd)
            try:
                target = os.readlink(path)
                if (target.startswith(temp_dir + "/dovecot.") and
                        target.endswith(" (deleted)")):
                    sizes.append(os.stat(path).st_size)
            except OSError:
                continue
    return sizes


def wait_temp_file(temp_dir, min_size, timeout=30):
    """Waits for the state "a Dovecot process holds a temp file of at
    least min_size bytes in temp_dir"."""
    deadline = time.time() + timeout
    while True:
        sizes = open_temp_files(temp_dir)
        if any(s >= min_size for s in sizes):
            return max(sizes)
        assert time.time() < deadline, \
            "no temp file >= %d bytes in %s: %r" % (min_size, temp_dir, sizes)
        time.sleep(0.05)


def marker():
    return "PVTMP" + secrets.token_hex(8)


def big_body(mark, size):
    line = ("%s plaintext line of an encrypted user's mail\r\n" % mark)
    return (line * (size // len(line) + 1)).encode()


class HeldData:
    """An LMTP transaction whose DATA stops mid-body until finish()."""

    def __init__(self, dc, rcpt, message, held_bytes):
        self.c = dc.lmtp()
        assert self.c.command("MAIL FROM:<s@example.com>").startswith("250")
        r = self.c.command("RCPT TO:<%s>" % rcpt)
        assert r.startswith("250"), r
        assert self.c.command("DATA").startswith("354")
        data = message.replace(b"\r\n.", b"\r\n..")
        self.rest = data[held_bytes:] + b".\r\n"
        self.c.send(data[:held_bytes])

    def finish(self):
        self.c.send(self.rest)
        r = self.c.reply()
        self.c.quit()
        return r


def test_disk_temp_dir_fails_closed():
    mark_enc, mark_ok = marker(), marker()
    mem = tempfile.mkdtemp(prefix="popvault-mailtmp-", dir=MEMORY_TMP)
    os.chmod(mem, 0o1777)
    with Ext4Image(64) as fs, contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, mem, True)
        mnt = fs.mnt
        users = [User("enc", fields=enc_fields()),
                 User("diskok", fields=enc_fields(
                     popvault_allow_disk_temp="yes")),
                 User("peruser", fields=enc_fields(mail_temp_dir=mem)),
                 User("plain")]
        # as docs/encryption.md says: lmtp_rcpt_check_quota makes LMTP
        # set the recipient up at RCPT, before DATA is spooled
        with crypt_dovecot(users, extra_conf="mail_temp_dir = %s\n"
                           "lmtp_rcpt_check_quota = yes\n" % mnt) as dc:
            big = make_message("big", body=big_body(mark_enc, 300 << 10))
            # LMTP refuses the RCPT: the DATA never leaves this process
            c = dc.lmtp()
            assert c.command("MAIL FROM:<s@example.com>").startswith("250")
            r = c.command("RCPT TO:<enc>")
            c.quit()
            assert r.startswith("4"), r
            line = dc.wait_log(
                r"Error: .*Failed to initialize user enc: "
                r"popvault: user enc: mail_temp_dir=%s is on a "
                r"disk \(file system type 0xef53\)[^\n]*" % re.escape(mnt)
            ).group(0)
            assert "popvault_allow_disk_temp=yes allows it" in line, line
            # dovecot-lda reading a pipe: temporary failure (75) before
            # it reads the message
            rc, err = dc.lda("enc", big)
            assert rc == 75, (rc, err)
            p = dc.pop3()
            p.command("USER enc")
            r = p.command("PASS " + dc.users["enc"].password)
            p.close()
            assert r.startswith("-ERR [SYS/TEMP]"), r
            assert message_files(dc, "enc") == []

            # LMTP spools into the lmtp service's mail_temp_dir: a
            # per-user one (in memory) can't vouch for that spool
            c = dc.lmtp()
            assert c.command("MAIL FROM:<s@example.com>").startswith("250")
            r = c.command("RCPT TO:<peruser>")
            c.quit()
            assert r.startswith("4"), r
            dc.wait_log(r"Error: .*popvault: user peruser: LMTP spools into "
                        r"the mail_temp_dir of the lmtp service")
            dc.pop3("peruser").quit()

            # a user without encrypted mail is not concerned
            dc.deliver("plain", make_message("plain big",
                                             body=big_body("x", 300 << 10)))

            # the opt-in lets it through with a warning, and the scan sees
            # the plaintext spool on the disk: the scan finds what leaks
            held = HeldData(dc, "diskok", make_message(
                "ok big", body=big_body(mark_ok, 300 << 10)), 250 << 10)
            wait_temp_file(mnt, 200 << 10)
            assert fs.has(mark_ok)
            assert held.finish().startswith("250")
            dc.wait_log(r"Warning: .*popvault: crypt: user diskok: "
                        r"mail_temp_dir=%s is on a disk .*\(allowed by "
                        r"popvault_allow_disk_temp=yes\)" % re.escape(mnt))
        fs.unmount()
        assert fs.has(mark_ok)
        # neither LMTP (refused at RCPT) nor dovecot-lda (refused before
        # reading the pipe) ever had the refused user's message
        assert not fs.has(mark_enc)


def test_disk_temp_dir_refused_at_rcpt():
    """Without lmtp_rcpt_check_quota LMTP sets the recipient up only after
    DATA, which it has spooled by then into the lmtp service's
    mail_temp_dir: on a disk, popvault refuses an encrypting recipient at
    RCPT itself, so its message never reaches the spool."""
    mark_enc, mark_ok, mark_plain = marker(), marker(), marker()
    with Ext4Image(64) as fs:
        mnt = fs.mnt
        users = [User("enc", fields=enc_fields()),
                 User("diskok", fields=enc_fields(
                     popvault_allow_disk_temp="yes")),
                 User("plain")]
        with crypt_dovecot(users, extra_conf="mail_temp_dir = %s\n"
                           % mnt) as dc:
            c = dc.lmtp()
            assert c.command("MAIL FROM:<s@example.com>").startswith("250")
            r = c.command("RCPT TO:<enc>")
            assert r.startswith("451 4.3.0"), r
            # the reply names neither the directory nor the setting
            assert mnt not in r and "popvault" not in r, r
            # a client that sends the message anyway: no recipient, so
            # LMTP reads nothing
            r = c.command("DATA")
            assert r.startswith("5"), r
            c.quit()
            line = dc.wait_log(
                r"Error: [^\n]*popvault: user enc: mail_temp_dir=%s is on "
                r"a disk \(file system type 0xef53\)[^\n]*"
                % re.escape(mnt)).group(0)
            assert "popvault_allow_disk_temp=yes allows it" in line, line
            assert message_files(dc, "enc") == []

            # the opt-in and a user without encrypted mail deliver; their
            # spool is on the disk, where the scan sees it
            held = HeldData(dc, "diskok", make_message(
                "ok big", body=big_body(mark_ok, 300 << 10)), 250 << 10)
            wait_temp_file(mnt, 200 << 10)
            assert fs.has(mark_ok)
            assert held.finish().startswith("250")
            dc.deliver("plain", make_message(
                "plain big", body=big_body(mark_plain, 300 << 10)))
            assert len(message_files(dc, "diskok")) == 1
            assert len(message_files(dc, "plain")) == 1
            assert not fs.has(mark_enc)
        fs.unmount()
        assert fs.has(mark_ok)
        assert not fs.has(mark_enc)


def _raw_device_scan(compressed):
    """mail root on its own ext4 image, mail_temp_dir in memory: LMTP of
    20 MB held mid-DATA, dovecot-lda through a pipe, APPEND, IMAP BINARY
    of a 1 MB base64 attachment held selected, POP3 and IMAP reads (with
    zlib: its seekable copy of the 20 MB message held selected): no
    marker on the raw image, mounted or not."""
    marks = {k: marker() for k in ("lmtp", "lda", "append", "binary")}
    conf = {}
    if compressed:
        # 2.4 renamed zlib to mail_compress (as test_encryption.py)
        conf = {"mail_plugins": by_version("zlib popvault",
                                           "mail_compress popvault"),
                "plugin": by_version({"zlib_save": "gz"},
                                     {"mail_compress_write_method": "gz"})}
    with Ext4Image(128) as fs:
        users = [User("enc", fields=enc_fields())]
        with crypt_dovecot(users, home_root=fs.mnt, **conf) as dc:
            assert open_temp_files(dc.mail_temp_dir) == []
            # LMTP DATA of 20 MB, stopped after 12 MB: spooled in memory
            held = HeldData(dc, "enc", make_message(
                "lmtp", body=big_body(marks["lmtp"], 20 << 20)), 12 << 20)
            wait_temp_file(dc.mail_temp_dir, 11 << 20)
            assert not fs.has(marks["lmtp"])
            assert held.finish().startswith("250")

            rc, err = dc.lda("enc", make_message(
                "lda", body=big_body(marks["lda"], 512 << 10)))
            assert rc == 0, err
            imap_append(dc, "enc", make_message(
                "append", body=big_body(marks["append"], 256 << 10)))

            attachment = big_body(marks["binary"], 1 << 20)
            b64 = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
            mime = (b"--b\r\nContent-Type: text/plain\r\n\r\nsee file\r\n"
                    b"--b\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 +
                    b"--b--\r\n")
            dc.deliver("enc", make_message("binary", body=mime,
                       extra_headers=("MIME-Version: 1.0",
                                      "Content-Type: multipart/mixed; "
                                      "boundary=b")))
            i = dc.imap("enc")
            try:
                st, _ = i.command("SELECT INBOX")
                assert " OK" in st, st
                st, out = i.command("FETCH 4 BINARY.PEEK[2]")
                assert " OK" in st, st
                assert marks["binary"].encode() in out
                # the decoded part waits in a temp file while the mailbox
                # stays selected: in memory, not on the image
                wait_temp_file(dc.mail_temp_dir, 1 << 20)
                assert not fs.has(marks["binary"])
                st, out = i.command("FETCH 1:4 BODY.PEEK[]")
                assert " OK" in st and marks["lda"].encode() in out, st
                if compressed:
                    # zlib keeps a seekable plaintext copy of the mail it
                    # read last while the mailbox stays selected
                    st, out = i.command("FETCH 1 BODY.PEEK[]")
                    assert marks["lmtp"].encode() in out, st
                    wait_temp_file(dc.mail_temp_dir, 19 << 20)
                    assert not fs.has(marks["lmtp"])
            finally:
                i.logout()
            p = dc.pop3("enc")
            assert marks["append"].encode() in p.retr(3)
            p.quit()
            assert len(message_files(dc, "enc")) == 4
            for m in marks.values():
                assert not fs.has(m), m
        fs.unmount()
        for m in marks.values():
            assert not fs.has(m), m
        # the scan does see the stored mail: encrypted containers
        assert fs.has(MAGIC)


def test_raw_device_scan_finds_no_plaintext():
    _raw_device_scan(compressed=False)


def test_raw_device_scan_finds_no_plaintext_compressed():
    _raw_device_scan(compressed=True)


def test_global_settings_keep_lmtp_running():
    """popvault_encrypt in plugin {} also reaches LMTP's raw mail user
    (the incoming message's holder), which has no opt-in of its own: it is
    not refused, or the lmtp process would stop for every recipient. Two
    connections, so the second one's raw user meets the loaded plugin."""
    with Ext4Image(32) as fs:
        users = [User("optin", fields={"popvault_allow_disk_temp": "yes"}),
                 User("enc")]
        plugin = {"popvault_encrypt": "yes",
                  "popvault_master_key": "<MASTER>"}
        with crypt_dovecot(users, plugin=plugin, extra_conf=(
                "mail_temp_dir = %s\nservice lmtp {\n  process_limit = 1\n"
                "}\n" % fs.mnt)) as dc:
            for n in range(2):
                dc.deliver("optin", make_message("global %d" % n))
                c = dc.lmtp()
                r = c.deliver("enc", make_message("refused"))["enc"]
                c.quit()
                assert r.startswith("4"), r
            assert len(message_files(dc, "optin")) == 2
            assert not [l for l in dc.log_errors() if "Fatal" in l]

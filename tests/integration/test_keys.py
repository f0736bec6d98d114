"""Key management (issue 6): password-locked keys created at first login,
fail-closed delivery before that, a wrong or changed password that reads
nothing and changes nothing, recovery-key password reset, rotation with
old and new mail readable, and the doveadm popvault key commands."""

import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import stat

from harness import User, make_message
from crypt_util import MAGIC, crypt_dovecot, enc_fields, message_files, \
    read_until_bye, all_files

# distinctive, so a leak into a log or file is found by a plain search
PW_A = "Tr0ub4dor-7xq-first"
PW_B = "Corr3ct-h0rse-second"
KEY_PW = {"userdb_popvault_key_password": "%w"}
PASSWORD_MODE = {"popvault_encrypt": "yes"}


def keys_dir(dc, user):
    return os.path.join(dc.home(user), ".popvault", "keys")


def key_files(dc, user):
    d = keys_dir(dc, user)
    if not os.path.isdir(d):
        return []
    return sorted(n for n in os.listdir(d) if n.endswith(".key"))


def current_key(dc, user):
    with open(os.path.join(keys_dir(dc, user), "current")) as f:
        return f.read().strip()


def container_key_id(path):
    """key_id of a PVLT container: after magic, version, cipher,
    chunk_log2 and flags (docs/encryption.md)."""
    with open(path, "rb") as f:
        head = f.read(20)
    assert head.startswith(MAGIC), path
    return head[12:20].hex()


def set_passdb_password(dc, user, password):
    """The admin changes the password in the passdb only (no re-wrap)."""
    dc.users[user].password = password
    dc.update_user(user)
    path = os.path.join(dc.tmp, "passwd")
    later = os.stat(path).st_mtime + 2
    os.utime(path, (later, later))
    auth_rereads(dc)


def auth_rereads(dc):
    """The auth process looks at a passwd-file at most once a second of
    its clock (clock_services=("auth",)): move that clock a second on."""
    dc.advance_clock(1)


def file_state(dc, user):
    """{maildir base name: (flags, sha256)}: what a login must not change
    (new/ -> cur/ moves are Dovecot's, not a change of mail)."""
    state = {}
    for path in message_files(dc, user):
        base, _, flags = os.path.basename(path).partition(":2,")
        with open(path, "rb") as f:
            state[base] = (flags, hashlib.sha256(f.read()).hexdigest())
    return state


def key_list(dc, user):
    _, out, _ = dc.doveadm("-f", "tab", "popvault", "key", "list", "-u", user)
    rows = [l.split("\t") for l in out.strip().splitlines()]
    # the user once, in the column doveadm adds itself for -A
    assert rows[0] == ["Username", "key_id", "created", "current",
                       "locked_by"], rows
    return rows[1:]


def private_keys_via_recovery(dc, user, recovery):
    """Opens the user's recovery-v1 seals with libsodium (ctypes): the
    private keys in the clear, so the test can look for them on disk."""
    sodium = ctypes.CDLL(ctypes.util.find_library("sodium") or
                         "libsodium.so.23")
    assert sodium.sodium_init() >= 0
    rsk = bytes.fromhex(recovery[len("pvrk1-"):].replace("-", ""))
    rpk = ctypes.create_string_buffer(32)
    assert sodium.crypto_scalarmult_base(rpk, rsk) == 0
    keys = []
    for name in key_files(dc, user):
        with open(os.path.join(keys_dir(dc, user), name)) as f:
            text = f.read()
        m = re.search(r"^private recovery-v1 \S+ ([0-9a-f]+)$", text, re.M)
        sealed = bytes.fromhex(m.group(1))
        sk = ctypes.create_string_buffer(32)
        assert sodium.crypto_box_seal_open(
            sk, sealed, ctypes.c_ulonglong(len(sealed)), rpk.raw, rsk) == 0
        # it is the key pair's private key: it derives the public key
        pk = ctypes.create_string_buffer(32)
        assert sodium.crypto_scalarmult_base(pk, sk.raw) == 0
        assert re.search(r"^public %s$" % pk.raw.hex(), text, re.M), name
        keys.append(sk.raw)
    return keys


def pop3_read_all(dc, user, originals):
    p = dc.pop3(user)
    try:
        count, _ = p.stat()
        assert count == len(originals), (count, len(originals))
        for i, m in enumerate(originals):
            # the client's line reader ends the last line with CRLF
            tail = m if m.endswith(b"\r\n") else m + b"\r\n"
            assert p.retr(i + 1).endswith(tail), i
    finally:
        p.quit()


def test_password_mode_end_to_end():
    alice = User("alice", PW_A, PASSWORD_MODE, passdb_fields=KEY_PW)
    with crypt_dovecot([alice], clock_services=("auth",)) as dc:
        # before the first login there is no key pair: fail closed
        lmtp = dc.lmtp()
        try:
            r = lmtp.deliver("alice", make_message("early"))["alice"]
        finally:
            lmtp.quit()
        assert r.startswith("4"), r
        assert message_files(dc, "alice") == []
        dc.wait_log(r"alice.*no key pair yet")

        # the first login creates it, locked with the login password only
        p = dc.pop3("alice")
        p.quit()
        dc.wait_log(r"pop3\(alice\).*created key pair")
        names = key_files(dc, "alice")
        assert len(names) == 1
        kd = keys_dir(dc, "alice")
        assert stat.S_IMODE(os.stat(kd).st_mode) == 0o700
        with open(os.path.join(kd, names[0])) as f:
            text = f.read()
        assert stat.S_IMODE(os.stat(os.path.join(kd, names[0])).st_mode) \
            == 0o600
        assert re.search(r"^private password-v1 argon2id13 3 65536 ",
                         text, re.M), text
        assert "master-v1" not in text
        rows = key_list(dc, "alice")
        assert len(rows) == 1 and rows[0][1] == names[0][:-4] and \
            rows[0][3:] == ["yes", "password"], rows

        originals = [make_message("m%d" % i, body=("%d" % i) * (n + 1))
                     for i, n in enumerate((100, 3 * 65536 + 5))]
        for m in originals:
            dc.deliver("alice", m)
        files = message_files(dc, "alice")
        assert len(files) == 2
        for path in files:
            with open(path, "rb") as f:
                assert f.read(8) == MAGIC, path
        pop3_read_all(dc, "alice", originals)

        # a recovery key, printed once; the wrong password makes none
        rc, _, err = dc.doveadm("popvault", "key", "recovery", "-u", "alice",
                                "-P", check=False, input=b"wrong\n")
        assert rc != 0 and "does not unlock" in err, (rc, err)
        assert not os.path.exists(os.path.join(kd, "recovery"))
        _, out, _ = dc.doveadm("-f", "tab", "popvault", "key", "recovery",
                               "-u", "alice", "-P",
                               input=(PW_A + "\n").encode())
        m = re.search(r"(pvrk1-[0-9a-f-]{71})", out)
        assert m, out
        recovery = m.group(1)
        assert key_list(dc, "alice")[0][4] == "password,recovery"

        # rotation: refused with a wrong password, then a new current key
        rc, _, err = dc.doveadm("popvault", "key", "rotate", "-u", "alice",
                                "-p", "wrong", check=False)
        assert rc != 0 and len(key_files(dc, "alice")) == 1, err
        old_id = current_key(dc, "alice")
        dc.doveadm("popvault", "key", "rotate", "-u", "alice", "-P",
                   input=(PW_A + "\n").encode())
        new_id = current_key(dc, "alice")
        assert new_id != old_id and len(key_files(dc, "alice")) == 2
        rows = key_list(dc, "alice")
        assert sorted((r[1], r[3], r[4]) for r in rows) == sorted([
            (old_id, "no", "password,recovery"),
            (new_id, "yes", "password,recovery")]), rows
        before = set(message_files(dc, "alice"))
        originals.append(make_message("after rotation"))
        dc.deliver("alice", originals[-1])
        (newest,) = set(message_files(dc, "alice")) - before
        assert container_key_id(newest) == new_id
        assert all(container_key_id(f) == old_id for f in before)
        pop3_read_all(dc, "alice", originals)

        # the password changes in the passdb, the keys stay locked with
        # the old one: POP3 is refused, IMAP reads nothing, nothing changes
        state = file_state(dc, "alice")
        set_passdb_password(dc, "alice", PW_B)
        log_at = dc.log_size()
        p = dc.pop3()
        assert p.command("USER alice").startswith("+OK")
        r = p.command("PASS " + PW_B)
        assert r.startswith("-ERR [SYS/TEMP]"), r
        p.close()
        dc.wait_log(r"password does not unlock it", since=log_at)
        assert "popvault_crypt_unlock_failed" in dc.log() or \
            re.search(r"can't unlock the private keys", dc.log())
        # IMAP: Dovecot answers a temporary FETCH failure with BYE and
        # the cause (imap_fetch_failure's default), not with data
        c = dc.imap("alice")
        st, out = c.command("EXAMINE INBOX")
        assert " OK" in st, st
        lines = read_until_bye(c, "f1 FETCH 1 (BODY.PEEK[])")
        assert any(l.startswith("* BYE FETCH failed: The mailbox's "
                                "encryption keys did not unlock")
                   for l in lines), lines
        assert not any("BODY[]" in l for l in lines), lines
        c.close()
        assert file_state(dc, "alice") == state

        # the recovery key re-locks the keys with the new password
        rc, _, err = dc.doveadm("popvault", "key", "password", "-u", "alice",
                                "-O", "-N", check=False,
                                input=("wrong\n" + PW_B + "\n").encode())
        assert rc != 0, err
        dc.doveadm("popvault", "key", "password", "-u", "alice", "-R", "-N",
                   input=(recovery + "\n" + PW_B + "\n").encode())
        pop3_read_all(dc, "alice", originals)

        # the tools read with the password given as a setting
        rc, _, _ = dc.doveadm("popvault", "verify", "-u", "alice",
                              check=False)
        assert rc != 0
        dc.doveadm("-o", "plugin/popvault_key_password=" + PW_B,
                   "popvault", "verify", "-u", "alice")

        # encryption turned off for new mail: the password still opens
        # the old mail, new mail is stored as it comes
        dc.update_user("alice", popvault_encrypt="no")
        auth_rereads(dc)
        before = set(message_files(dc, "alice"))
        originals.append(make_message("plain again"))
        dc.deliver("alice", originals[-1])
        (plain,) = set(message_files(dc, "alice")) - before
        with open(plain, "rb") as f:
            assert not f.read().startswith(MAGIC)
        pop3_read_all(dc, "alice", originals)

        # no password or recovery key in the mail store, the key store,
        # mail_temp_dir or the log (the harness's own passdb file holds
        # the passwords, as a passdb does)
        secrets = [s.encode() for s in
                   (PW_A, PW_B, recovery, recovery.replace("-", "")[5:])]
        sks = private_keys_via_recovery(dc, "alice", recovery)
        assert len(sks) == 2
        secrets += sks + [sk.hex().encode() for sk in sks]
        for path in [dc.log_path] + list(all_files(dc.home("alice"),
                                                   dc.mail_temp_dir)):
            with open(path, "rb") as f:
                data = f.read()
            for s in secrets:
                assert s not in data, (s, path)


def test_generate_before_first_login_and_dual_mode():
    bob = User("bob", PW_A, PASSWORD_MODE, passdb_fields=KEY_PW)
    carol = User("carol", PW_B, enc_fields(), passdb_fields=KEY_PW)
    with crypt_dovecot([bob, carol]) as dc:
        # an admin makes bob's key pair: mail is accepted before he logs in
        dc.doveadm("popvault", "key", "generate", "-u", "bob", "-P",
                   input=(PW_A + "\n").encode())
        assert key_list(dc, "bob")[0][3:] == ["yes", "password"]
        rc, _, err = dc.doveadm("popvault", "key", "generate", "-u", "bob",
                                "-p", PW_A, check=False)
        assert rc != 0 and "already" in err, err
        assert len(key_files(dc, "bob")) == 1
        m = make_message("for bob")
        dc.deliver("bob", m)
        pop3_read_all(dc, "bob", [m])

        # master key and password: the first login locks with both, and
        # the master key alone reads (the provider's choice of mode)
        p = dc.pop3("carol")
        p.quit()
        assert key_list(dc, "carol")[0][3:] == ["yes", "master,password"]
        m = make_message("for carol")
        dc.deliver("carol", m)
        pop3_read_all(dc, "carol", [m])
        dc.doveadm("popvault", "verify", "-u", "carol")
        # rotation without the password would leave a key the password
        # can't open: refused
        rc, _, err = dc.doveadm("popvault", "key", "rotate", "-u", "carol",
                                check=False)
        assert rc != 0 and "password-locked" in err, err


def test_master_mode_generate_and_list_all():
    dave = User("dave", fields=enc_fields())
    erin = User("erin", fields=enc_fields())
    with crypt_dovecot([dave, erin]) as dc:
        dc.doveadm("popvault", "key", "generate", "-u", "dave")
        rows = key_list(dc, "dave")
        assert [r[3:] for r in rows] == [["yes", "master"]], rows
        _, out, _ = dc.doveadm("-f", "json", "popvault", "key", "list",
                               "-u", "dave")
        (entry,) = json.loads(out)
        assert entry["key_id"] == rows[0][1] and \
            entry["locked_by"] == "master", entry
        # master mode rotates without a password; old mail stays readable
        m1 = make_message("before")
        dc.deliver("dave", m1)
        # erin has no key pair to rotate: that user fails, dave rotates
        rc, _, err = dc.doveadm("popvault", "key", "rotate", "-A",
                                check=False)
        assert rc != 0 and re.search(r"erin.*no key pair yet", err), err
        m2 = make_message("after")
        dc.deliver("dave", m2)
        pop3_read_all(dc, "dave", [m1, m2])
        _, out, _ = dc.doveadm("-f", "tab", "popvault", "key", "list", "-A")
        users = [l.split("\t")[0] for l in out.strip().splitlines()[1:]]
        assert users.count("dave") == 2 and "erin" not in users, out

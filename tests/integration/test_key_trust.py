"""Key stores under the configurations admins use (issue 15): password
mode with one passwd-file as passdb and userdb or with SQL (item 3),
master-user logins (4), delivery that encrypts only to a public key the
master key vouches for (7), and racing first deliveries and logins (9)."""

import ctypes
import ctypes.util
import hashlib
import os
import re
import threading

from harness import User, make_message
from crypt_util import MAGIC, crypt_dovecot, enc_fields, lmtp_reply, \
    message_files, read_until_bye
from test_keys import KEY_PW, PASSWORD_MODE, keys_dir, key_files, \
    current_key, key_list, pop3_read_all

PW_A = "Lant3rn-quartz-alpha"
PW_B = "Gl4cier-moss-bravo"
PW_C = "Harb0ur-fern-charlie"
ADMIN_PW = "Adm1n-master-zulu"


def sodium():
    lib = ctypes.CDLL(ctypes.util.find_library("sodium") or
                      "libsodium.so.23")
    assert lib.sodium_init() >= 0
    return lib


def key_text(dc, user, key_id):
    with open(os.path.join(keys_dir(dc, user), key_id + ".key")) as f:
        return f.read()


def password_opens(dc, user, key_id, password):
    """Does the key file's password-v1 wrap open with password? Done here
    with libsodium from the file format (docs/encryption.md), so the test
    does not trust popvault's own answer."""
    text = key_text(dc, user, key_id)
    m = re.search(r"^private password-v1 argon2id13 (\d+) (\d+) ([0-9a-f]+) "
                  r"([0-9a-f]+) ([0-9a-f]+)$", text, re.M)
    if m is None:
        return False
    ops, mem_kib = int(m.group(1)), int(m.group(2))
    salt, nonce, ct = (bytes.fromhex(m.group(i)) for i in (3, 4, 5))
    pk = bytes.fromhex(re.search(r"^public ([0-9a-f]{64})$", text,
                                 re.M).group(1))
    lib = sodium()
    kek = ctypes.create_string_buffer(32)
    pw = password.encode()
    assert lib.crypto_pwhash(kek, ctypes.c_ulonglong(32), pw,
                             ctypes.c_ulonglong(len(pw)), salt,
                             ctypes.c_ulonglong(ops),
                             ctypes.c_size_t(mem_kib * 1024), 2) == 0
    aad = (b"popvault-keypair 1\0" + user.encode() + b"\0" +
           bytes.fromhex(key_id) + pk +
           b"password-v1 argon2id13 %d %d\0" % (ops, mem_kib))
    sk = ctypes.create_string_buffer(32)
    if lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sk, None, None, ct, ctypes.c_ulonglong(len(ct)), aad,
            ctypes.c_ulonglong(len(aad)), nonce, kek.raw) != 0:
        return False
    derived = ctypes.create_string_buffer(32)
    assert lib.crypto_scalarmult_base(derived, sk.raw) == 0
    return derived.raw == pk


def pop3_login(dc, login, password):
    p = dc.pop3()
    try:
        return p.login(login, password)
    finally:
        p.close()


def file_bytes(dc, user):
    out = {}
    for name in key_files(dc, user):
        with open(os.path.join(keys_dir(dc, user), name), "rb") as f:
            out[name] = f.read()
    return out


# ---- item 3: password mode in the layouts the docs show -----------------

def check_password_mode_layout(userdb):
    alice = User("alice", PW_A, PASSWORD_MODE, passdb_fields=KEY_PW)
    bob = User("bob", PW_B, PASSWORD_MODE, passdb_fields=KEY_PW)
    with crypt_dovecot([alice, bob], userdb=userdb) as dc:
        # LMTP and doveadm look the user up without a password: %w is
        # empty there, and nothing is created or locked with it
        r = lmtp_reply(dc, "alice", make_message("early"))
        assert r.startswith("4"), r
        assert message_files(dc, "alice") == []
        assert key_list(dc, "alice") == [] and \
            key_files(dc, "alice") == [], key_files(dc, "alice")

        # the admin's generate works, and the key opens with that password
        _, out, _ = dc.doveadm("popvault", "key", "generate", "-u",
                               "alice", "-p", PW_A)
        (name,) = key_files(dc, "alice")
        key_id = name[:-4]
        assert key_id in out and current_key(dc, "alice") == key_id
        assert key_list(dc, "alice")[0][3:] == ["yes", "password"]
        assert password_opens(dc, "alice", key_id, PW_A)
        m = make_message("for alice")
        dc.deliver("alice", m)
        pop3_read_all(dc, "alice", [m])
        # the tools still take the password from doveadm -o
        rc, _, _ = dc.doveadm("popvault", "verify", "-u", "alice",
                              check=False)
        assert rc != 0
        dc.doveadm("-o", "plugin/popvault_key_password=" + PW_A,
                   "popvault", "verify", "-u", "alice")

        # the user's own first login makes it with the login password
        assert pop3_login(dc, "bob", PW_B).startswith("+OK")
        (name,) = key_files(dc, "bob")
        assert password_opens(dc, "bob", name[:-4], PW_B)
        m = make_message("for bob")
        dc.deliver("bob", m)
        pop3_read_all(dc, "bob", [m])
        with open(message_files(dc, "bob")[0], "rb") as f:
            assert f.read(8) == MAGIC
        assert dc.log_errors() == [] or all(
            "no key pair yet" in l for l in dc.log_errors()), \
            dc.log_errors()


def test_password_mode_one_passwd_file():
    check_password_mode_layout("passwd-file-both")


def test_password_mode_sql_passdb_userdb():
    check_password_mode_layout("sqlite-both")


# ---- item 4: master-user logins -----------------------------------------

def test_master_user_never_locks_with_its_password():
    # pure password mode: the master logs in before (alice) and after
    # (bob) the user's own first login
    alice = User("alice", PW_A, PASSWORD_MODE, passdb_fields=KEY_PW)
    bob = User("bob", PW_B, PASSWORD_MODE, passdb_fields=KEY_PW)
    with crypt_dovecot([alice, bob],
                       master_users={"admin": ADMIN_PW}) as dc:
        # master first: nothing to read, nothing created
        assert pop3_login(dc, "alice*admin", ADMIN_PW).startswith("+OK")
        assert key_files(dc, "alice") == []
        # the log process may write the line after the client's +OK
        dc.wait_log(r"pop3\(alice\).*login by master user admin")
        assert pop3_login(dc, "alice", PW_A).startswith("+OK")
        (name,) = key_files(dc, "alice")
        assert password_opens(dc, "alice", name[:-4], PW_A)
        assert not password_opens(dc, "alice", name[:-4], ADMIN_PW)

        # user first: the master's login changes nothing and reads nothing
        assert pop3_login(dc, "bob", PW_B).startswith("+OK")
        m = make_message("for bob")
        dc.deliver("bob", m)
        before = file_bytes(dc, "bob")
        log_at = dc.log_size()
        r = pop3_login(dc, "bob*admin", ADMIN_PW)
        assert r.startswith("-ERR [SYS/TEMP]"), r
        dc.wait_log(r"pop3\(bob\).*can't unlock the private keys \(a login "
                    r"by master user admin", since=log_at)
        assert file_bytes(dc, "bob") == before
        pop3_read_all(dc, "bob", [m])
        # a master IMAP session browses, but an encrypted FETCH fails
        c = dc.imap()
        assert " OK" in c.login("bob*admin", ADMIN_PW)
        st, _ = c.command("EXAMINE INBOX")
        assert " OK" in st, st
        lines = read_until_bye(c, "f1 FETCH 1 (BODY.PEEK[])")
        c.close()
        assert not any("BODY[]" in l for l in lines), lines
        assert file_bytes(dc, "bob") == before


def test_master_user_in_master_and_password_mode():
    # master key and password: a master session reads with the master
    # key, as the provider can, and still locks nothing with its password
    carol = User("carol", PW_C, enc_fields(), passdb_fields=KEY_PW)
    dave = User("dave", PW_A, enc_fields(), passdb_fields=KEY_PW)
    with crypt_dovecot([carol, dave],
                       master_users={"admin": ADMIN_PW}) as dc:
        # master first: its login creates nothing; delivery then makes
        # the key pair with the master key, which the master session reads
        assert pop3_login(dc, "carol*admin", ADMIN_PW).startswith("+OK")
        assert key_files(dc, "carol") == []
        m = make_message("for carol")
        dc.deliver("carol", m)
        (name,) = key_files(dc, "carol")
        p = dc.pop3()
        assert p.login("carol*admin", ADMIN_PW).startswith("+OK")
        assert p.retr(1).endswith(m)
        p.quit()
        assert "password-v1" not in key_text(dc, "carol", name[:-4])
        # carol's own login adds her password's wrap
        pop3_read_all(dc, "carol", [m])
        assert key_list(dc, "carol")[0][3:] == ["yes", "master,password"]
        assert password_opens(dc, "carol", name[:-4], PW_C)
        assert not password_opens(dc, "carol", name[:-4], ADMIN_PW)

        # user first: the master session leaves the key file as it is
        assert pop3_login(dc, "dave", PW_A).startswith("+OK")
        (name,) = key_files(dc, "dave")
        assert password_opens(dc, "dave", name[:-4], PW_A)
        m = make_message("for dave")
        dc.deliver("dave", m)
        before = file_bytes(dc, "dave")
        p = dc.pop3()
        assert p.login("dave*admin", ADMIN_PW).startswith("+OK")
        assert p.retr(1).endswith(m)
        p.quit()
        assert file_bytes(dc, "dave") == before
        assert not password_opens(dc, "dave", name[:-4], ADMIN_PW)


# ---- item 7: delivery encrypts only to a public key the master vouches for

def plant_key_pair(dc, user, lines):
    """An attacker who can write the home but has no master key: a fresh
    X25519 key pair with the given extra lines, made current."""
    lib = sodium()
    pk, sk = ctypes.create_string_buffer(32), ctypes.create_string_buffer(32)
    assert lib.crypto_box_keypair(pk, sk) == 0
    key_id = hashlib.blake2b(pk.raw, digest_size=32).digest()[:8].hex()
    text = "popvault-keypair 1\nkey_id %s\ncreated 1700000000\npublic %s\n" \
        % (key_id, pk.raw.hex()) + "".join(l + "\n" for l in lines)
    write_key_store_file(dc, user, key_id + ".key", text)
    write_key_store_file(dc, user, "current", key_id + "\n")
    return key_id


def write_key_store_file(dc, user, name, text):
    path = os.path.join(keys_dir(dc, user), name)
    with open(path, "w") as f:
        f.write(text)
    os.chown(path, dc.mail_uid, dc.mail_gid)
    os.chmod(path, 0o600)


def test_planted_key_pair_gets_no_mail():
    erin = User("erin", fields=enc_fields())
    fred = User("fred", fields=enc_fields())
    with crypt_dovecot([erin, fred]) as dc:
        mails = [make_message("before")]
        dc.deliver("erin", mails[0])
        dc.deliver("fred", make_message("fred's"))
        own = current_key(dc, "erin")
        fred_id = current_key(dc, "fred")
        planted = [
            # a bare key pair
            [],
            # made-up MAC and master wrap of the right sizes
            ["public-mac master-v1 " + os.urandom(32).hex(),
             "private master-v1 %s %s %s" % (os.urandom(16).hex(),
                                             os.urandom(24).hex(),
                                             os.urandom(48).hex())],
        ]
        for i, lines in enumerate(planted):
            plant_key_pair(dc, "erin", lines)
            count = len(message_files(dc, "erin"))
            log_at = dc.log_size()
            r = lmtp_reply(dc, "erin", make_message("planted %d" % i))
            assert r.startswith("4"), (i, r)
            assert len(message_files(dc, "erin")) == count
            dc.wait_log(r"lmtp\(erin\).*master key does not vouch for the "
                        r"current public key", since=log_at)
        # another user's genuine key file, MAC and all
        write_key_store_file(dc, "erin", fred_id + ".key",
                             key_text(dc, "fred", fred_id))
        write_key_store_file(dc, "erin", "current", fred_id + "\n")
        r = lmtp_reply(dc, "erin", make_message("fred's key"))
        assert r.startswith("4"), r
        for name in key_files(dc, "erin"):
            if name != own + ".key":
                os.unlink(os.path.join(keys_dir(dc, "erin"), name))

        # the user's own key again: delivery and reading work
        write_key_store_file(dc, "erin", "current", own + "\n")

        # One LMTP connection, so one lmtp process, which remembers the
        # key file it verified: the file's MAC changed in place (same
        # name, same public key) must be checked again, not taken as
        # known.
        text = key_text(dc, "erin", own)
        swapped = re.sub(r"^public-mac master-v1 [0-9a-f]+$",
                         "public-mac master-v1 " + os.urandom(32).hex(),
                         text, flags=re.M)
        assert swapped != text
        c = dc.lmtp()
        try:
            mails.append(make_message("same process"))
            r = c.deliver("erin", mails[-1])["erin"]
            assert r.startswith("2"), r
            write_key_store_file(dc, "erin", own + ".key", swapped)
            count = len(message_files(dc, "erin"))
            log_at = dc.log_size()
            r = c.deliver("erin", make_message("swapped in place"))["erin"]
            assert r.startswith("4"), r
            assert len(message_files(dc, "erin")) == count
            dc.wait_log(r"lmtp\(erin\).*master key does not vouch for the "
                        r"current public key", since=log_at)
        finally:
            c.quit()
        write_key_store_file(dc, "erin", own + ".key", text)

        mails.append(make_message("after"))
        dc.deliver("erin", mails[-1])
        pop3_read_all(dc, "erin", mails)


def test_key_files_without_mac_are_migrated():
    gina = User("gina", fields=enc_fields())
    hank = User("hank", PW_B, PASSWORD_MODE, passdb_fields=KEY_PW)
    with crypt_dovecot([gina, hank]) as dc:
        # a key store as popvault wrote it before the MAC: the master
        # wrap vouches for it, and delivery adds the same MAC line back
        mails = [make_message("first")]
        dc.deliver("gina", mails[0])
        key_id = current_key(dc, "gina")
        with_mac = key_text(dc, "gina", key_id)
        assert re.search(r"^public-mac master-v1 [0-9a-f]{64}$", with_mac,
                         re.M)
        without = re.sub(r"^public-mac .*\n", "", with_mac, flags=re.M)
        assert without != with_mac
        write_key_store_file(dc, "gina", key_id + ".key", without)
        mails.append(make_message("second"))
        dc.deliver("gina", mails[-1])
        assert key_text(dc, "gina", key_id) == with_mac
        pop3_read_all(dc, "gina", mails)

        # password mode, then a master key is added: deliveries wait (451)
        # until the user's login adds the master wrap and MAC
        assert pop3_login(dc, "hank", PW_B).startswith("+OK")
        m = make_message("password mode")
        dc.deliver("hank", m)
        dc.update_user("hank", **enc_fields(
            popvault_master_key="<" + dc.master_key))
        dc.stop()
        dc.start_again()
        r = lmtp_reply(dc, "hank", make_message("refused"))
        assert r.startswith("4"), r
        assert pop3_login(dc, "hank", PW_B).startswith("+OK")
        assert key_list(dc, "hank")[0][3:] == ["yes", "master,password"]
        m2 = make_message("master and password")
        dc.deliver("hank", m2)
        pop3_read_all(dc, "hank", [m, m2])


# ---- item 9: racing first deliveries and logins -------------------------

def race(dc, user, password, n):
    """n LMTP deliveries and n POP3 logins of user at once, each its own
    Dovecot process; connections are set up first, then a barrier lets
    every DATA and PASS go together. Returns (delivered messages, LMTP
    replies, POP3 replies)."""
    barrier = threading.Barrier(2 * n)
    mails = [make_message("race %d" % i) for i in range(n)]
    replies, logins, errors = [], [], []

    def deliver(m):
        try:
            c = dc.lmtp()
            try:
                barrier.wait()
                replies.append(c.deliver(user, m)[user])
            finally:
                c.quit()
        except Exception as e:  # reported below, not lost in a thread
            errors.append(repr(e))

    def login():
        try:
            p = dc.pop3()
            try:
                assert p.command("USER " + user).startswith("+OK")
                barrier.wait()
                r = p.command("PASS " + password)
                logins.append(r)
                if r.startswith("+OK"):
                    # a read unlocks the keys in every mode
                    if p.stat()[0] > 0:
                        p.retr(1)
                    p.quit()
            finally:
                p.close()
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=deliver, args=(m,)) for m in mails]
    threads += [threading.Thread(target=login) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [], errors
    return mails, replies, logins


def assert_one_key_pair(dc, user, locks, password=None):
    (name,) = key_files(dc, user)
    assert current_key(dc, user) == name[:-4]
    assert key_list(dc, user)[0][3:] == ["yes", locks]
    if password is not None:
        assert password_opens(dc, user, name[:-4], password)


def pop3_read_set(dc, user, mails):
    p = dc.pop3(user)
    try:
        count, _ = p.stat()
        got = [p.retr(i + 1) for i in range(count)]
    finally:
        p.quit()
    # Dovecot adds Return-Path and Delivered-To in front
    assert len(got) == len(mails), (len(got), len(mails))
    for m in mails:
        assert sum(g.endswith(m) for g in got) == 1, m[:200]


def test_key_creation_races():
    n = 6
    ivy = User("ivy", PW_A, enc_fields(), passdb_fields=KEY_PW)
    jon = User("jon", fields=enc_fields())
    kim = User("kim", PW_C, enc_fields(), passdb_fields=KEY_PW)
    with crypt_dovecot([ivy, jon, kim]) as dc:
        # master key and password, a fresh user: LMTP creates with the
        # master key, logins with both; readers never miss a key file
        mails, replies, logins = race(dc, "ivy", PW_A, n)
        assert all(r.startswith("250") for r in replies), replies
        assert all(r.startswith("+OK") for r in logins), logins
        assert_one_key_pair(dc, "ivy", "master,password", PW_A)
        pop3_read_set(dc, "ivy", mails)

        # master key only: creators are deliveries, readers POP3 logins
        mails, replies, logins = race(dc, "jon", jon.password, n)
        assert all(r.startswith("250") for r in replies), replies
        assert all(r.startswith("+OK") for r in logins), logins
        assert_one_key_pair(dc, "jon", "master")
        pop3_read_set(dc, "jon", mails)

        # the key pair LMTP made alone gets the password's wrap at the
        # first login, also when logins and deliveries race
        first = make_message("before any login")
        dc.deliver("kim", first)
        assert key_list(dc, "kim")[0][3:] == ["yes", "master"]
        mails, replies, logins = race(dc, "kim", PW_C, n)
        assert all(r.startswith("250") for r in replies), replies
        assert all(r.startswith("+OK") for r in logins), logins
        assert_one_key_pair(dc, "kim", "master,password", PW_C)
        pop3_read_set(dc, "kim", [first] + mails)

        # the lines the counts below need, written by the log process
        dc.wait_log(r"created key pair", count=3)
        dc.wait_log(r"pop3\(kim\).*added the missing master-key")
        log = dc.log()
        assert "is missing" not in log
        assert dc.log_errors() == [], dc.log_errors()
        assert len(re.findall(r"created key pair", log)) == 3
        # one login added kim's password wrap, the others found it
        assert len(re.findall(r"pop3\(kim\).*added the missing master-key "
                              r"or password wrap to 1 key pair", log)) == 1

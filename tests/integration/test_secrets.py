"""Master keys as admins write them, and no secret in any log (issue 15,
items 1 and 2).

popvault_master_key = </file in plugin {} (docs/settings.md,
dovecot-conf/conf.d/90-popvault.conf) gives popvault the file's content:
the key itself. A userdb field gives what the passwd-file says: a path,
"<path", or the key. Every form must work, and every way of getting the
master key, a password, a recovery key or a key file wrong must fail
with a log line that names the setting or the file, never the secret in
any encoding."""

import base64
import contextlib
import os
import re
import secrets
import shutil
import tempfile

from harness import Dovecot, HarnessError, User, make_message
from crypt_util import MAGIC, lmtp_reply, message_files
from test_keys import private_keys_via_recovery

ENC = {"popvault_encrypt": "yes"}
PW_A = "Kx7-secret-pw-alpha-93"
PW_B = "Qz4-secret-pw-bravo-17"
KEY_PW = {"userdb_popvault_key_password": "%w"}


def encodings(secret):
    """Every form a secret may take in a log line: the bytes, hex in
    either case, base64 with and without padding, and prefixes long
    enough to identify it (16 hex digits, 12 base64 characters, 8
    bytes; for text, its first 10 characters)."""
    if isinstance(secret, str):
        text = secret.encode()
        forms = [text, text[:10], text.hex().encode(),
                 base64.b64encode(text)]
        return [f for f in forms if len(f) >= 8]
    hexl = secret.hex().encode()
    b64 = base64.b64encode(secret)
    forms = [secret, secret[:8], hexl, hexl.upper(), hexl[:16],
             hexl[:16].upper(), hexl[-16:], b64, b64.rstrip(b"="),
             b64[:12], base64.urlsafe_b64encode(secret)[:12]]
    return forms


def assert_no_secret(blobs, named_secrets):
    """blobs: {where: bytes}; named_secrets: {name: secret}."""
    for where, data in blobs.items():
        for name, secret in named_secrets.items():
            for form in encodings(secret):
                assert form not in data, \
                    "%s (%r) found in %s" % (name, form, where)


@contextlib.contextmanager
def key_dir():
    d = tempfile.mkdtemp(prefix="popvault-secrets-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_key(d, name, content, mode=0o644):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())
    os.chmod(path, mode)
    return path


def give_to_mail_uid(dc, *paths):
    """Only the mail processes' uid reads the key files (0600)."""
    for p in paths:
        os.chown(p, dc.mail_uid, dc.mail_gid)
        os.chmod(p, 0o600)


def log_bytes(dc):
    """The whole log as bytes: a secret's raw bytes are searched too."""
    with open(dc.log_path, "rb") as f:
        return f.read()


def deliver_and_read(dc, user):
    m = make_message("for %s" % user, body="secret body of %s\n" % user)
    dc.deliver(user, m)
    (path,) = message_files(dc, user)
    with open(path, "rb") as f:
        assert f.read(8) == MAGIC, path
    p = dc.pop3(user)
    try:
        assert p.retr(1).endswith(m + b"\r\n" if not m.endswith(b"\r\n")
                                  else m)
    finally:
        p.quit()


def test_master_key_forms():
    master = secrets.token_bytes(32)
    hex_key = master.hex()
    b64_key = base64.b64encode(master).decode()
    with key_dir() as d:
        hex_file = write_key(d, "master.hex", hex_key + "\n")
        b64_file = write_key(d, "master.b64", b64_key)
        users = [
            # plugin {}: popvault_master_key = </file (hex, newline)
            User("dflt", fields=ENC),
            # userdb (passwd-file extra fields), as an admin writes them
            User("ltpath", fields=dict(ENC, popvault_master_key="<" +
                                       hex_file)),
            User("path", fields=dict(ENC, popvault_master_key=b64_file)),
            # the key itself as a userdb value, under mail_debug
            User("valuedebug", fields=dict(ENC,
                                           popvault_master_key=hex_key)),
        ]
        with Dovecot(users, plugin={"popvault_master_key": "<" + hex_file}
                     ) as dc:
            give_to_mail_uid(dc, hex_file, b64_file)
            for u in ("dflt", "ltpath", "path", "valuedebug"):
                deliver_and_read(dc, u)
            # one key in every form: a key pair made under the plugin {}
            # value opens with the path given to doveadm, and the other way
            dc.doveadm("-o", "plugin/popvault_master_key=" + b64_file,
                       "popvault", "verify", "-u", "dflt")
            dc.doveadm("-o", "plugin/popvault_master_key=<" + hex_file,
                       "popvault", "verify", "-u", "path")
            assert not dc.log_errors(), dc.log_errors()
            # the key appears only where Dovecot itself logs the userdb
            # reply of "valuedebug" (mail_debug: the auth-master lookup
            # and "Added userdb setting", which hide only names with
            # "pass"): why the docs say to give a userdb a path
            log = log_bytes(dc)
            dovecot_lines = [l for l in log.splitlines()
                             if hex_key.encode() in l]
            assert dovecot_lines and all(
                re.search(rb"\(valuedebug\)<[^>]*><[^>]*>: Debug: "
                          rb"(auth-master: (userdb lookup|conn \S+ "
                          rb"\(pid=\d+,uid=\d+\): auth input:)|.*Added userdb "
                          rb"setting: (plugin/)?popvault_master_key=)", l)
                for l in dovecot_lines), dovecot_lines
            assert_no_secret({"log": b"\n".join(
                l for l in log.splitlines() if l not in dovecot_lines)},
                {"master key": master})

        # base64 through `<file` (no newline), and the key itself as a
        # userdb value on a server without mail_debug: then nothing logs
        # it
        users = [User("dflt64", fields=ENC),
                 User("value", fields=dict(ENC,
                                           popvault_master_key=hex_key))]
        with Dovecot(users, plugin={"popvault_master_key": "<" + b64_file},
                     debug=False) as dc:
            give_to_mail_uid(dc, hex_file, b64_file)
            for u in ("dflt64", "value"):
                deliver_and_read(dc, u)
            assert not dc.log_errors(), dc.log_errors()
            assert_no_secret({"log": log_bytes(dc)},
                             {"master key": master})

        # plugin {} with the plain path: each mail process reads the file
        with Dovecot([User("dfltpath", fields=ENC)],
                     plugin={"popvault_master_key": hex_file}) as dc:
            give_to_mail_uid(dc, hex_file, b64_file)
            deliver_and_read(dc, "dfltpath")
            assert not dc.log_errors(), dc.log_errors()
            assert_no_secret({"log": log_bytes(dc)},
                             {"master key": master})


def test_no_secret_in_any_log():
    master = secrets.token_bytes(32)
    unreadable = secrets.token_bytes(32)
    short = secrets.token_bytes(32).hex()[:63]
    bad_b64 = base64.b64encode(secrets.token_bytes(32)).decode()
    bad_b64 = bad_b64[:20] + "!" + bad_b64[21:]
    long_key = secrets.token_bytes(33)
    with key_dir() as d:
        good = write_key(d, "good.key", master.hex() + "\n")
        bad_short = write_key(d, "short.key", short + "\n")
        bad_enc = write_key(d, "badenc.key", bad_b64 + "\n")
        bad_long = write_key(d, "long.key", long_key.hex() + "\n")
        locked = write_key(d, "locked.key", unreadable.hex() + "\n", 0o000)
        empty = write_key(d, "empty.key", "")
        huge = write_key(d, "huge.key", (master.hex() + "\n") * 40)
        a_dir = os.path.join(d, "dir.key")
        os.mkdir(a_dir)
        misconfigured = {
            "mshort": "<" + bad_short, "menc": bad_enc,
            "mlong": "<" + bad_long, "mlocked": "<" + locked,
            "mempty": empty, "mdir": "<" + a_dir, "mhuge": huge,
            "mmissing": "<" + os.path.join(d, "missing.key"),
        }
        users = [User(name, fields=dict(ENC, popvault_master_key=v))
                 for name, v in misconfigured.items()]
        users += [User("mk", fields=dict(ENC, popvault_master_key=good)),
                  User("pw", PW_A, ENC, passdb_fields=KEY_PW),
                  User("kf", fields=dict(ENC, popvault_master_key=good))]
        stderr = {}
        logs = {}
        # plugin {} with `<file` of a damaged key: the value is neither a
        # key nor a path, and is not logged
        with Dovecot([User("dflt", fields=ENC)],
                     plugin={"popvault_master_key": "<" + bad_short}) as dc:
            r = lmtp_reply(dc, "dflt", make_message("never"))
            assert r.startswith("451"), r
            dc.wait_log(r"lmtp\(\d+\).*Failed to initialize user: "
                        r"popvault: user dflt: crypt: ")
            assert_no_secret({"log": log_bytes(dc)},
                             {"damaged key": short})
            dc.wait_log(r"lmtp\(\d+\).*popvault: user dflt: crypt: "
                        r"popvault_master_key: neither a key .*not logged")
            logs["log (damaged <file)"] = log_bytes(dc)

        with Dovecot(users) as dc:
            give_to_mail_uid(dc, good, bad_short, bad_enc, bad_long, empty,
                             huge)
            # each misconfigured master key: LMTP 451, nothing stored, an
            # error that names the setting and the file
            for name, value in misconfigured.items():
                r = lmtp_reply(dc, name, make_message("never"))
                assert r.startswith("451"), (name, r)
                assert message_files(dc, name) == [], name
                dc.wait_log(r"lmtp\(\d+\).*popvault: user %s: crypt: "
                            r"popvault_master_key: [^\n]*%s"
                            % (name, re.escape(value.lstrip("<"))))
            deliver_and_read(dc, "mk")

            # password mode: an admin locked the keys with PW_B while the
            # passdb has PW_A, and made a recovery key
            dc.doveadm("popvault", "key", "generate", "-u", "pw", "-P",
                       input=(PW_B + "\n").encode())
            _, out, err = dc.doveadm("popvault", "key", "recovery", "-u",
                                     "pw", "-P", input=(PW_B + "\n").encode())
            recovery = re.search(r"(pvrk1-[0-9a-f-]{71})", out).group(1)
            stderr["recovery"] = err
            dc.deliver("pw", make_message("for pw"))

            # a wrong recovery key, a damaged one, a wrong password
            wrong_rk = "pvrk1-" + "-".join(
                secrets.token_hex(4) for _ in range(8))
            damaged_rk = recovery[:-1]
            for rk in (wrong_rk, damaged_rk):
                rc, out, err = dc.doveadm(
                    "popvault", "key", "password", "-u", "pw", "-R", "-N",
                    check=False, input=(rk + "\n" + PW_A + "\n").encode())
                assert rc != 0, out
                stderr["rk " + rk] = out + err
            rc, out, err = dc.doveadm(
                "popvault", "key", "rotate", "-u", "pw", "-P", check=False,
                input=(PW_A + "\n").encode())
            assert rc != 0 and "does not unlock" in err, err
            stderr["rotate"] = out + err
            rc, out, err = dc.doveadm(
                "-o", "plugin/popvault_key_password=" + PW_A,
                "popvault", "verify", "-u", "pw", check=False)
            assert rc != 0 and "does not unlock" in err, err
            stderr["verify"] = out + err
            # the user's login password does not open the keys
            p = dc.pop3()
            r = p.login("pw", PW_A)
            p.close()
            assert r.startswith("-ERR [SYS/TEMP]"), r
            dc.wait_log(r"pop3\(pw\).*password does not unlock it")

            # the key files of a master-key user: edited, unreadable, a
            # directory, empty, missing
            deliver_and_read(dc, "kf")
            kd = os.path.join(dc.home("kf"), ".popvault", "keys")
            with open(os.path.join(kd, "current")) as f:
                kid = f.read().strip()
            kpath = os.path.join(kd, kid + ".key")
            with open(kpath) as f:
                original = f.read()
            edited = re.sub(r"(private master-v1 \S+ \S+ )(..)",
                            lambda m: m.group(1) +
                            ("00" if m.group(2) != "00" else "11"),
                            original)
            st = os.stat(kpath)

            def reading_fails(what):
                log_at = dc.log_size()
                p = dc.pop3("kf")
                try:
                    r = p.command("RETR 1")
                except EOFError:
                    r = "(disconnected)"
                p.close()
                assert not r.startswith("+OK"), (what, r)
                # the file, or for a missing one the key id, is named
                dc.wait_log(r"pop3\(kf\).*%s" % re.escape(
                    kpath if what != "missing" else "unknown key id " + kid),
                    since=log_at)
                rc, out, err = dc.doveadm("popvault", "verify", "-u", "kf",
                                          check=False)
                assert rc != 0, what
                stderr["key file " + what] = out + err

            for what, make in (
                    ("edited", lambda: open(kpath, "w").write(edited)),
                    ("unreadable", lambda: os.chmod(kpath, 0o000)),
                    ("empty", lambda: open(kpath, "w").close()),
                    ("directory", lambda: (os.unlink(kpath),
                                           os.mkdir(kpath))),
                    ("missing", lambda: os.rmdir(kpath))):
                make()
                if what != "missing" and os.path.isfile(kpath):
                    os.chown(kpath, st.st_uid, st.st_gid)
                if what == "unreadable" and os.getuid() == 0:
                    os.chown(kpath, 0, 0)
                reading_fails(what)
                if os.path.isfile(kpath):
                    os.chmod(kpath, 0o600)

            sks = private_keys_via_recovery(dc, "pw", recovery)
            logs["log"] = log_bytes(dc)
        named = {"master key": master, "unreadable key": unreadable,
                 "short key": short, "bad base64 key": bad_b64,
                 "33-byte key": long_key, "password A": PW_A,
                 "password B": PW_B, "recovery key": recovery,
                 "recovery key digits": recovery[6:].replace("-", ""),
                 "recovery key bytes": bytes.fromhex(
                     recovery[6:].replace("-", "")),
                 "wrong recovery key": wrong_rk[6:].replace("-", "")}
        for i, sk in enumerate(sks):
            named["private key %d" % i] = sk
        blobs = dict(logs)
        blobs.update(("doveadm " + k, v.encode()) for k, v in stderr.items())
        assert_no_secret(blobs, named)


def test_users_with_different_master_keys_in_one_lmtp_process():
    """An lmtp process keeps users' master keys in guarded slots shared
    by the users with the same key (popvault-crypt-storage.c). Users
    with different ones, one after the other and in one transaction
    (both keys in use at once), each get their own: a key file vouched
    for by one master key is refused under the other, so a mix-up
    fails delivery."""
    keys = [secrets.token_bytes(32) for _ in range(3)]
    with key_dir() as d:
        files = [write_key(d, "master%d.hex" % i, k.hex() + "\n")
                 for i, k in enumerate(keys)]
        names = ["ka", "kb", "kc"]
        users = [User(n, fields=dict(ENC, popvault_master_key="<" + f))
                 for n, f in zip(names, files)]
        with Dovecot(users, debug=False) as dc:
            give_to_mail_uid(dc, *files)
            sent = {n: [] for n in names}
            c = dc.lmtp()
            try:
                for i in range(3):
                    for n in names + names[::-1]:
                        m = make_message("%s %d" % (n, len(sent[n])))
                        assert c.deliver(n, m)[n].startswith("2")
                        sent[n].append(m)
                    m = make_message("to all %d" % i)
                    replies = c.deliver(names, m)
                    assert all(replies[n].startswith("2")
                               for n in names), replies
                    for n in names:
                        sent[n].append(m)
            finally:
                c.quit()
            for n in names:
                p = dc.pop3(n)
                try:
                    got = [p.retr(i + 1) for i in range(len(sent[n]))]
                finally:
                    p.quit()
                # LMTP adds Return-Path and Delivered-To in front
                assert len(got) == len(sent[n]) and all(
                    g.rstrip(b"\r\n").endswith(m.rstrip(b"\r\n"))
                    for g, m in zip(got, sent[n])), n
            assert not dc.log_errors(), dc.log_errors()


def test_master_key_file_unusable_at_start():
    """`<file` of a missing file or a directory: doveconf refuses the
    configuration and names the setting and the file; Dovecot does not
    start. `<file` of an empty file is an empty value, which Dovecot and
    popvault treat as unset: delivery fails closed."""
    with key_dir() as d:
        a_dir = os.path.join(d, "dir.key")
        os.mkdir(a_dir)
        for path, why in ((os.path.join(d, "nonexistent.key"),
                           r"Can't open file %s: No such file"),
                          (a_dir, r"read\(%s\) failed: Is a directory")):
            dc = Dovecot([User("u", fields=ENC)],
                         plugin={"popvault_master_key": "<" + path})
            try:
                dc.start()
            except HarnessError as e:
                # 2.4 names the setting without plugin/
                assert re.search(r"(plugin/(\d+/)?)?popvault_master_key: " +
                                 why % re.escape(path), str(e)), str(e)
            else:
                raise AssertionError("dovecot started with %s" % path)
            finally:
                dc.stop()
                dc.cleanup()

        empty = write_key(d, "empty.key", "")
        with Dovecot([User("u", fields=ENC)],
                     plugin={"popvault_master_key": "<" + empty}) as dc:
            r = lmtp_reply(dc, "u", make_message("never"))
            assert r.startswith("451"), r
            assert message_files(dc, "u") == []
            dc.wait_log(r"lmtp\(u\).*not saving: no key pair yet, and no "
                        r"master key to create one")

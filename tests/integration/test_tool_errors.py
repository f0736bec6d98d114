"""doveadm popvault encrypt | decrypt | sweep | verify with input they
can't work with (issue 15: nothing lost, nothing leaked, bad input gets a
clear error): keys that do not unlock copy nothing, encrypted mail that
can't be opened is not reported as done, and every form of -u/-A names
the user once."""

import json
import os
import re

from harness import User, dovecot, make_message
from crypt_util import MAGIC, crypt_dovecot, message_files
from policy_util import deliver_numbered, imap_inventory

PW = "Tool-errors-Rk4v"
WRONG = "Tool-errors-Xx0x"
# encryption for this run only, as an admin turns it on for a user
ENCRYPT = ("-o", "plugin/popvault_encrypt=yes")


def _stdin(line):
    return (line + "\n").encode()


def _magic(dc, user):
    out = []
    for path in message_files(dc, user):
        with open(path, "rb") as f:
            out.append(f.read(len(MAGIC)) == MAGIC)
    return sorted(out)


def _results(out):
    return re.findall(r"result=(.*)$", out, re.M)


def _password_mode(dc):
    """pam: three plaintext messages and a key pair locked by PW only
    (no popvault setting: an admin turns encryption on with -o)."""
    deliver_numbered(dc, "pam", 3)
    dc.doveadm(*ENCRYPT, "popvault", "key", "generate", "-u", "pam", "-P",
               input=_stdin(PW))
    inv = imap_inventory(dc, "pam")
    assert sorted(inv["INBOX"]) == ["m1", "m2", "m3"], inv
    return inv


def test_encrypt_copies_nothing_when_the_keys_do_not_unlock():
    """Password mode, encrypt without the password or with a wrong one:
    a clear error before anything is copied (the base left the copy it
    could not read back beside its original, so a client saw the
    message twice, and exited 75)."""
    with crypt_dovecot([User("pam", "login-pw", {})]) as dc:
        before = _password_mode(dc)
        for opts, stdin, why in (((), None, "with -P"),
                                 (("-P",), _stdin(WRONG), "unlock")):
            rc, out, err = dc.doveadm("-f", "flow", *ENCRYPT, "popvault",
                                      "encrypt", "-u", "pam", *opts,
                                      check=False, input=stdin)
            assert rc == 65, (opts, rc, out, err)
            assert _results(out) == [], out
            assert re.search(r"popvault encrypt: user pam: .*%s.*nothing "
                             r"done" % why, err), err
            # nothing copied: no second copy of any message
            assert imap_inventory(dc, "pam") == before
            assert _magic(dc, "pam") == [False] * 3

        _, out, _ = dc.doveadm("-f", "flow", *ENCRYPT, "popvault",
                               "encrypt", "-u", "pam", "-P",
                               input=_stdin(PW))
        assert _results(out) == ["encrypted"] * 3, out
        assert _magic(dc, "pam") == [True] * 3
        log = dc.log()
        assert PW not in log and WRONG not in log


def test_encrypt_removes_a_copy_it_cannot_read_back():
    """The check before copying passes when the user has no current key
    pair (the first copy makes one with the secrets at hand), but an
    older key pair this run can't open fails every read (the receiver
    loads them all): that copy is expunged in the same run, the original
    stays (the base left the copy beside it)."""
    with crypt_dovecot([User("pam", "login-pw", {})]) as dc:
        before = _password_mode(dc)
        keys = os.path.join(dc.home("pam"), ".popvault", "keys")
        os.unlink(os.path.join(keys, "current"))
        rc, out, err = dc.doveadm(
            "-f", "flow", *ENCRYPT, "-o",
            "plugin/popvault_master_key=" + dc.master_key, "popvault",
            "encrypt", "-u", "pam", check=False)
        assert rc == 75, (rc, out, err)
        assert len(_results(out)) == 1 and _results(out)[0].startswith(
            "failed: can't read the copy back: "), out
        assert _results(out)[0].endswith("copy removed, original kept"), out
        assert imap_inventory(dc, "pam") == before
        assert _magic(dc, "pam") == [False] * 3


def test_decrypt_without_a_key_fails_and_counts_what_is_left():
    """A user with no crypt setting left (password mode, no -P): decrypt
    can open nothing, so it fails and says how many messages are left
    encrypted (the base exited 0 and printed nothing)."""
    with crypt_dovecot([User("pam", "login-pw", {})]) as dc:
        before = _password_mode(dc)
        dc.doveadm(*ENCRYPT, "popvault", "encrypt", "-u", "pam", "-P",
                   input=_stdin(PW))
        assert _magic(dc, "pam") == [True] * 3

        rc, out, err = dc.doveadm("-f", "flow", "popvault", "decrypt",
                                  "-u", "pam", check=False)
        assert rc == 65, (rc, out, err)
        assert _results(out) == ["left encrypted: no key here"] * 3, out
        assert "user pam: 3 encrypted message(s) left" in err, err
        assert "-P" in err, err
        assert _magic(dc, "pam") == [True] * 3
        # verify names the reason for each message
        rc, out, err = dc.doveadm("-f", "flow", "popvault", "verify",
                                  "-u", "pam", check=False)
        assert rc == 65, (rc, out, err)
        assert _results(out) == ["failed: Encrypted, and no key for it "
                                 "here (no popvault_master_key or "
                                 "popvault_key_password)"] * 3, out

        _, out, _ = dc.doveadm("-f", "flow", "popvault", "decrypt", "-u",
                               "pam", "-P", input=_stdin(PW))
        assert _results(out) == ["decrypted"] * 3, out
        assert _magic(dc, "pam") == [False] * 3
        # nothing left: without a key is fine now
        rc, out, err = dc.doveadm("-f", "flow", "popvault", "decrypt",
                                  "-u", "pam", check=False)
        assert rc == 0 and out.strip() == "", (rc, out, err)
        assert imap_inventory(dc, "pam") == before
        assert PW not in dc.log()


def _check_user_once(out, fmt, who, users, first_field):
    """One row per line (or JSON object); the user name appears in one
    column only, the first, as in doveadm's own Username column."""
    if fmt == "json":
        rows = json.loads(out)
        assert sorted({r["username"] for r in rows}) == users, (who, rows)
        for r in rows:
            assert [k for k, v in r.items() if v == r["username"]] == \
                ["username"], (who, r)
            assert "user" not in r, r
        return len(rows)
    lines = out.strip().splitlines()
    if fmt == "table":
        header = lines.pop(0).split()
        assert header[:2] == ["Username", first_field], (who, header)
        assert "user" not in header, header
    for line in lines:
        cells = line.split()
        assert cells[0] in users, (who, line)
        assert not any(c == cells[0] or c.endswith("=" + cells[0])
                       for c in cells[1:]), (who, line)
        if fmt == "flow":
            assert cells[1].startswith(first_field + "="), line
    assert sorted({l.split()[0] for l in lines}) == users, (who, out)
    return len(lines)


WHO = ((("-u", "ann"), ["ann"]), (("-A",), ["ann", "ben"]),
       (("-u", "a*"), ["ann"]))


def test_sweep_names_the_user_once():
    """sweep printed a user= column of its own besides doveadm's
    Username for -A: the name twice in every row."""
    users = [User(u, fields={"popvault_retain_unread": "1d"})
             for u in ("ann", "ben")]
    with dovecot(users) as dc:
        for u in ("ann", "ben"):
            deliver_numbered(dc, u, 2)
        for who, names in WHO:
            for fmt in ("json", "flow", "table"):
                _, out, _ = dc.doveadm("-f", fmt, "popvault", "sweep",
                                       "-n", *who, faketime="+2d")
                n = _check_user_once(out, fmt, who, names, "mailbox")
                assert n == 2 * len(names), out


def test_crypt_and_key_tools_name_the_user_once():
    """encrypt and decrypt (and verify, which shares the printing), key
    list (and the other key commands, alike): the same one user
    column."""
    users = [User(u, fields={"popvault_encrypt": "yes",
                             "popvault_master_key": "<MASTER>"})
             for u in ("ann", "ben")]
    with crypt_dovecot(users) as dc:
        for u in ("ann", "ben"):
            dc.deliver(u, make_message("one"))
        # a row per message: decrypt, encrypt again, decrypt
        # (not json: these flush every row as it happens, which closes
        # doveadm's JSON array early)
        for op, who, fmt in (("decrypt", ("-A",), "flow"),
                             ("encrypt", ("-u", "a*"), "table"),
                             ("encrypt", ("-u", "ben"), "flow"),
                             ("decrypt", ("-A",), "table")):
            names = ["ann", "ben"] if who == ("-A",) else \
                ["ann"] if who == ("-u", "a*") else ["ben"]
            opts = ("-o", "plugin/popvault_encrypt=no") \
                if op == "decrypt" else ()
            _, out, _ = dc.doveadm("-f", fmt, *opts, "popvault", op, *who)
            assert _check_user_once(out, fmt, who, names, "mailbox") == \
                len(names), out
        for who, names in WHO:
            for fmt in ("json", "flow", "table"):
                _, out, _ = dc.doveadm("-f", fmt, "popvault", "key", "list",
                                       *who)
                assert _check_user_once(out, fmt, who, names, "key_id") == \
                    len(names), out

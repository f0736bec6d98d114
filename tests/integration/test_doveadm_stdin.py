"""Every doveadm popvault command that needs a password reads it from
stdin (issue 15 item 10): key generate/rotate/recovery -P, key password
-O/-R then -N (two lines of one stdin), and encrypt/decrypt/verify -P,
which earlier took the password only as `doveadm -o
plugin/popvault_key_password=<password>` on the command line."""

import os
import re

from harness import User, make_message
from crypt_util import MAGIC, crypt_dovecot, message_files

PW_1 = "St1n-first-Qz8v"
PW_2 = "St1n-second-Wk3p"
PW_3 = "St1n-third-Hy6m"
# password mode without a passdb hand-over: only doveadm has the password
PASSWORD_MODE = {"popvault_encrypt": "yes"}


def _stdin(*lines):
    return "".join(l + "\n" for l in lines).encode()


def _magic(dc, user):
    out = []
    for path in message_files(dc, user):
        with open(path, "rb") as f:
            out.append(f.read(8) == MAGIC)
    return out


def _verify(dc, password):
    rc, out, err = dc.doveadm("-f", "flow", "popvault", "verify", "-u",
                              "sam", "-P", check=False,
                              input=_stdin(password))
    return rc, out + err


def test_every_password_taking_command_reads_stdin():
    sam = User("sam", "login-pw", PASSWORD_MODE)
    with crypt_dovecot([sam]) as dc:
        dc.doveadm("popvault", "key", "generate", "-u", "sam", "-P",
                   input=_stdin(PW_1))
        msgs = [make_message("stdin %d" % i, body="line %d\r\n" % i)
                for i in range(3)]
        for m in msgs:
            dc.deliver("sam", m)
        assert _magic(dc, "sam") == [True] * 3

        # verify reads with the password from stdin, and only with the
        # right one
        rc, out = _verify(dc, PW_1)
        assert rc == 0, out
        rc, out = _verify(dc, PW_2)
        assert rc != 0 and "did not unlock" in out, out
        # an empty line is refused, not taken as "no password"
        rc, out = _verify(dc, "")
        assert rc != 0 and "empty password" in out, out

        # old and new password: two lines of one stdin
        dc.doveadm("popvault", "key", "password", "-u", "sam", "-O", "-N",
                   input=_stdin(PW_1, PW_2))
        assert _verify(dc, PW_1)[0] != 0
        assert _verify(dc, PW_2)[0] == 0

        _, out, _ = dc.doveadm("-f", "tab", "popvault", "key", "recovery",
                               "-u", "sam", "-P", input=_stdin(PW_2))
        recovery = re.search(r"(pvrk1-[0-9a-f-]{71})", out).group(1)
        dc.doveadm("popvault", "key", "rotate", "-u", "sam", "-P",
                   input=_stdin(PW_2))
        # recovery key and new password: two lines of one stdin
        dc.doveadm("popvault", "key", "password", "-u", "sam", "-R", "-N",
                   input=_stdin(recovery, PW_3))
        assert _verify(dc, PW_2)[0] != 0
        assert _verify(dc, PW_3)[0] == 0

        # decrypt needs the private keys: without the password nothing
        # is decrypted, with it from stdin everything is
        rc, _, _ = dc.doveadm("-o", "plugin/popvault_encrypt=no",
                              "popvault", "decrypt", "-u", "sam",
                              check=False)
        assert rc == 65
        assert _magic(dc, "sam") == [True] * 3
        _, out, _ = dc.doveadm("-f", "flow", "-o",
                               "plugin/popvault_encrypt=no", "popvault",
                               "decrypt", "-u", "sam", "-P",
                               input=_stdin(PW_3))
        assert out.count("result=decrypted") == 3, out
        assert _magic(dc, "sam") == [False] * 3
        # encrypt reads each copy back: without the password nothing is
        # copied, with it from stdin everything is replaced
        rc, out, err = dc.doveadm("-f", "flow", "popvault", "encrypt", "-u",
                                  "sam", check=False)
        assert rc == 65 and "result=" not in out, out + err
        assert "give the key password with -P" in err, err
        assert _magic(dc, "sam") == [False] * 3
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "encrypt", "-u",
                               "sam", "-P", input=_stdin(PW_3))
        assert len(re.findall(r"result=encrypted$", out, re.M)) == 3, out
        assert _magic(dc, "sam") == [True] * 3
        rc, out = _verify(dc, PW_3)
        assert rc == 0 and "failed" not in out, out

        log = dc.log()
        for pw in (PW_1, PW_2, PW_3, recovery):
            assert pw not in log, "a secret is in the log"
        for path in message_files(dc, "sam"):
            with open(path, "rb") as f:
                data = f.read()
            assert b"stdin 1" not in data and PW_3.encode() not in data
        assert os.path.isdir(os.path.join(dc.home("sam"), ".popvault"))

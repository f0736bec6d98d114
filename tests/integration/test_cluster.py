"""Cluster operation (issue 9): two Dovecot backends on 127.0.0.1 with
their own ports and base_dirs, one mail storage directory and one
redis-server. A user moving between them gets the same policy outcome,
the same UIDLs, LOGIN-DELAY enforced across both, and encrypted mail
delivered on one backend reads on the other: per-user state lives in the
user's storage (index extensions, ~/.popvault, the UIDL ledger) or in
popvault_dict (redis), never in one backend's files."""

import contextlib
import os
import shutil
import tempfile

from harness import User, make_message, redis_server
from crypt_util import crypt_dovecot, enc_fields


@contextlib.contextmanager
def two_backends(fields_for):
    """Backends a and b sharing homes, redis and the master key."""
    homes = tempfile.mkdtemp(prefix="popvault-cluster-")
    os.chmod(homes, 0o755)
    try:
        with redis_server() as port:
            dict_uri = "redis:host=127.0.0.1:port=%d" % port
            with crypt_dovecot(fields_for(dict_uri, "<<MASTER>"), name="a",
                               home_root=homes) as a:
                with crypt_dovecot(fields_for(dict_uri, "<" + a.master_key),
                                   name="b", home_root=homes) as b:
                    yield a, b
    finally:
        shutil.rmtree(homes, ignore_errors=True)


def test_user_moves_between_backends():
    def users(dict_uri, master):
        common = {"popvault_dict": dict_uri}
        return [
            User("roam", fields=enc_fields(
                popvault_master_key=master, popvault_on_dele="hide",
                popvault_after_retr="move:Archive",
                popvault_uidl_ledger="yes", **common)),
            User("slow", fields=dict(popvault_login_delay="1h",
                                     popvault_login_delay_mode="refuse",
                                     **common)),
        ]

    with two_backends(users) as (a, b):
        msgs = [make_message("c%d" % i, body="cluster body %d\r\n" % i)
                for i in range(4)]
        a.deliver_many("roam", msgs[:3])

        # on a: UIDLs, then RETR 1 (moved at QUIT) and DELE 2 (hidden)
        p = a.pop3("roam")
        uidls_a = dict(p.uidl())
        assert p.retr(1).endswith(msgs[0])
        assert p.command("DELE 2").startswith("+OK")
        assert p.quit().startswith("+OK")

        # on b: the same outcome, the same UIDL, the plaintext decrypted
        # with the key pair a created
        p = b.pop3("roam")
        assert p.stat()[0] == 1
        assert dict(p.uidl()) == {"1": uidls_a["3"]}
        assert p.retr(1).endswith(msgs[2])
        assert p.quit().startswith("+OK")

        # mail delivered on b reads on a, with the UIDL b gives it (c2
        # went to Archive at b's QUIT, c1 is hidden: c3 is message 1)
        b.deliver("roam", msgs[3])
        p = b.pop3("roam")
        uidls_b = dict(p.uidl())
        p.quit()
        p = a.pop3("roam")
        assert dict(p.uidl()) == uidls_b and len(uidls_b) == 1, uidls_b
        assert p.retr(1).endswith(msgs[3])
        p.quit()
        # moved and hidden once, wherever the session ran
        c = b.imap("roam")
        try:
            st, out = c.command("STATUS Archive (MESSAGES)")
            # c0 (RETR on a), c2 (on b), c3 (on a)
            assert b"MESSAGES 3" in out, out
            st, out = c.command("EXAMINE INBOX")
            st, out = c.command("SEARCH KEYWORD $POP3Hidden")
            assert out.split(b"\r\n")[0] == b"* SEARCH 1", out
        finally:
            c.logout()

        # LOGIN-DELAY: a login on a counts on b
        a.pop3("slow").quit()
        p = b.pop3()
        p.command("USER slow")
        assert p.command("PASS pw-slow").startswith("-ERR [LOGIN-DELAY]")
        p.close()

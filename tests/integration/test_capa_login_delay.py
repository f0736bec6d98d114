"""RFC 2449 CAPA values after login, LOGIN-DELAY enforcement (also across
two Dovecot instances sharing a redis dict, and with a dict per user)."""

import os
import re
import socket

from harness import User, by_version, dovecot, make_message, redis_server
from policy_util import deliver_numbered, imap_inventory

DOVECOT_CAPA = ["CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING",
                "AUTH-RESP-CODE"]


def _capa(dc, user):
    p = dc.pop3(user)
    r, lines = p.multi("CAPA")
    assert r == "+OK", r
    p.quit()
    return lines


def test_capa_after_login_per_user():
    users = [User("plain"),
             User("del", fields={"popvault_after_retr": "delete"}),
             User("hide", fields={"popvault_after_retr": "hide"}),
             User("ret", fields={"popvault_retain_downloaded": "14d",
                                 "popvault_retain_unread": "30d"}),
             User("short", fields={"popvault_retain_downloaded": "36h"}),
             User("keep", fields={"popvault_on_dele": "keep"}),
             User("delay", fields={"popvault_login_delay": "15m",
                                   "popvault_retain_unread": "7d"})]
    with dovecot(users) as dc:
        # a user without popvault settings: popvault's value all the same
        assert _capa(dc, "plain") == DOVECOT_CAPA + ["EXPIRE NEVER"]
        assert _capa(dc, "del") == DOVECOT_CAPA + ["EXPIRE 0"]
        assert _capa(dc, "hide") == DOVECOT_CAPA + ["EXPIRE 0"]
        assert _capa(dc, "ret") == DOVECOT_CAPA + ["EXPIRE 14"]
        assert _capa(dc, "short") == DOVECOT_CAPA + ["EXPIRE 1"]
        assert _capa(dc, "keep") == DOVECOT_CAPA + ["EXPIRE NEVER"]
        assert _capa(dc, "delay") == DOVECOT_CAPA + ["EXPIRE 7",
                                                      "LOGIN-DELAY 900"]


def test_capa_text_in_bodies_and_pipelining_untouched():
    capa_body = ("+OK\r\n" + "\r\n".join(DOVECOT_CAPA) + "\r\n.\r\n").encode()
    users = [User("p", fields={"popvault_after_retr": "keep",
                               "popvault_retain_downloaded": "14d"})]
    with dovecot(users) as dc:
        msg = make_message("capa inside", body=capa_body)
        dc.deliver("p", msg)
        dc.deliver("p", make_message("second", body=capa_body * 3))
        p = dc.pop3("p")
        # everything pipelined in one write
        p.send("CAPA\r\nRETR 1\r\nCAPA\r\nTOP 2 100\r\nRETR 2\r\nCAPA\r\n")
        replies = []
        for _ in range(6):
            r = p.readline()
            assert r.startswith("+OK"), r
            replies.append(p.read_multiline())
        for i in (0, 2, 5):
            assert replies[i] == DOVECOT_CAPA + ["EXPIRE 14"], replies[i]
        body1 = "\r\n".join(replies[1]).encode() + b"\r\n"
        assert body1.endswith(capa_body), body1
        body2 = "\r\n".join(replies[4]).encode() + b"\r\n"
        assert body2.endswith(capa_body * 3), body2
        assert "EXPIRE" not in "\n".join(replies[1] + replies[3] + replies[4])
        p.quit()


def test_capa_after_multiline_replies_and_split_command():
    # the CAPA hook disarms itself during multi-line replies and must be
    # armed again by the next command, also when it arrives in pieces
    users = [User("q", fields={"popvault_retain_downloaded": "14d"})]
    with dovecot(users) as dc:
        dc.deliver_many("q", [make_message("m%d" % i, body="x" * 9000)
                              for i in range(2)])
        p = dc.pop3("q")
        expect = DOVECOT_CAPA + ["EXPIRE 14"]
        for first in ("RETR 1", "LIST", "UIDL", "TOP 2 5"):
            r, lines = p.multi(first)
            assert r.startswith("+OK"), r
            r, lines = p.multi("CAPA")
            assert lines == expect, (first, lines)
        # a multi-line reply while half a CAPA line has arrived
        p.send("RETR 2\r\nCA")
        assert p.readline().startswith("+OK")
        p.read_multiline()
        p.send("PA\r\n")
        assert p.readline().startswith("+OK")
        assert p.read_multiline() == expect
        p.quit()


def _no_errors(dc):
    assert dc.log_errors() == [], dc.log_errors()


def _refused(dc, user):
    """A login of user refused by LOGIN-DELAY: the seconds it says to
    wait. The refusal is the whole answer: the connection just closes."""
    p = dc.pop3()
    p.command("USER %s" % user)
    r = p.command("PASS pw-%s" % user)
    m = re.match(r"-ERR \[LOGIN-DELAY\] .* try again in (\d+) seconds$", r)
    assert m, r
    try:
        extra = p.readline()
    except (EOFError, OSError):
        extra = None
    assert extra is None, extra
    p.close()
    return int(m.group(1))


def test_login_delay_refuse_mode():
    users = [User("d", fields={"popvault_login_delay": "1h",
                               "popvault_login_delay_mode": "refuse",
                               "popvault_after_retr": "delete"}),
             User("free")]
    # pop3 reads its time from the test clock: the hour passes when the
    # test says so, not while it waits
    with dovecot(users, clock_services=("pop3",)) as dc:
        dc.deliver("d", make_message("m1"))
        p = dc.pop3("d")
        assert p.stat()[0] == 1
        p.quit()
        # a second login within the delay is refused, the mailbox untouched
        dc.deliver("d", make_message("m2"))
        assert _refused(dc, "d") <= 3600
        dc.wait_log(r"pop3\(d\).*Info: popvault: LOGIN-DELAY: login refused")
        # refusing used to crash pop3 right after the reply was sent
        dc.wait_log(r"pop3\(d\).*Disconnected")
        assert "killed with signal" not in dc.log(), dc.log_tail(20)
        # a refusal by policy is not an error (monitoring fires on those)
        _no_errors(dc)
        # other users are not delayed
        for _ in range(2):
            dc.pop3("free").quit()
        # half an hour later: still refused, and the window counts from
        # the first login, not from the refused ones
        dc.advance_clock(1800)
        assert _refused(dc, "d") <= 1800
        # the hour is over
        dc.advance_clock(1800)
        p = dc.pop3("d")
        assert p.stat()[0] == 2, "refused login changed the mailbox"
        p.quit()
        _no_errors(dc)


def _last_login(dc, user):
    with open(os.path.join(dc.home(user), "popvault.dict")) as f:
        return f.read()


def test_login_delay_empty_mode():
    # the default mode, and the same spelled out as the docs show it
    users = [User("e", fields={"popvault_login_delay": "1h",
                               "popvault_after_retr": "delete"}),
             User("x", fields={"popvault_login_delay": "1h",
                               "popvault_login_delay_mode": "empty",
                               "popvault_on_dele": "move:Trash",
                               "popvault_retain_unread": "1d"})]
    with dovecot(users) as dc:
        for u in ("e", "x"):
            deliver_numbered(dc, u, 2)
            p = dc.pop3(u)
            assert p.stat()[0] == 2
            p.quit()
            stamp = _last_login(dc, u)
            before = imap_inventory(dc, u)
            since = dc.log_size()
            # inside the window: logged in, an empty maildrop
            p = dc.pop3()
            assert p.command("USER %s" % u).startswith("+OK")
            r = p.command("PASS pw-%s" % u)
            assert r.startswith("+OK"), r
            assert p.stat() == (0, 0)
            assert p.list() == [] and p.uidl() == []
            for cmd in ("RETR 1", "TOP 1 0", "LIST 1", "UIDL 2", "DELE 1",
                        "RETR 3"):
                r = p.command(cmd)
                assert r.startswith("-ERR"), (cmd, r)
            r, lines = p.multi("CAPA")
            assert "LOGIN-DELAY 3600" in lines, lines
            assert p.quit().startswith("+OK")
            dc.wait_log(r"pop3\(%s\).*Info: popvault: LOGIN-DELAY: .*empty "
                        r"maildrop" % u, since=since)
            dc.wait_log(r"pop3\(%s\).*Disconnected: Logged out" % u,
                        since=since)
            # nothing changed: no \Seen, no policy, no sweep, no move
            assert imap_inventory(dc, u) == before, (before,
                                                     imap_inventory(dc, u))
            # and the window was not restarted
            assert _last_login(dc, u) == stamp
        _no_errors(dc)


def test_login_delay_across_two_instances_with_redis():
    with redis_server() as port:
        fields = {"popvault_login_delay": "1h",
                  "popvault_login_delay_mode": "refuse"}
        # the server-wide form (2.4: a popvault_dict { dict redis { } }
        # filter); per user: test_login_delay_dict_per_user
        plugin = {"popvault_dict": "redis:host=127.0.0.1:port=%d" % port}
        with dovecot([User("c", fields=fields)], name="a",
                     plugin=plugin) as a, \
                dovecot([User("c", fields=fields)], name="b",
                        plugin=plugin) as b:
            a.pop3("c").quit()
            p = b.pop3()
            p.command("USER c")
            r = p.command("PASS pw-c")
            assert r.startswith("-ERR [LOGIN-DELAY]"), r
            p.close()
            p = a.pop3()
            p.command("USER c")
            assert p.command("PASS pw-c").startswith("-ERR [LOGIN-DELAY]")
            p.close()


def _user_dict(port):
    """A user's own redis popvault_dict, as userdb fields in the form
    docs/settings.md shows for each Dovecot."""
    return by_version(
        {"popvault_dict": "redis:host=127.0.0.1:port=%d" % port},
        {"popvault_dict/dict": "redis",
         "popvault_dict/dict/redis/redis_host": "127.0.0.1",
         "popvault_dict/dict/redis/redis_port": str(port)})


def _redis_keys(port):
    """KEYS * of the redis on port, in RESP."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
        f = s.makefile("rb")
        count = int(f.readline()[1:])
        keys = []
        for _ in range(count):
            f.readline()
            keys.append(f.readline().decode().rstrip("\r\n"))
        return keys


def _login_reply(dc, user):
    """The reply to user's PASS, whatever it is."""
    p = dc.pop3()
    p.command("USER " + user)
    r = p.command("PASS " + dc.users[user].password)
    p.close()
    return r


def _login_delay_dict_per_user(userdb):
    delay = {"popvault_login_delay": "1h",
             "popvault_login_delay_mode": "refuse"}
    with redis_server() as port:
        bad = by_version(
            {"popvault_dict": "nosuchdriver:x"},
            {"popvault_dict/dict": "nosuchdriver"})
        users = [User("r", fields=dict(delay, **_user_dict(port))),
                 User("f", fields=delay),
                 User("bad", fields=dict(delay, **bad))]
        if by_version(False, True):
            # 2.3's URI kept in a 2.4 userdb (an SQL column after the
            # upgrade) is refused with a hint, never echoed
            users.append(User("uri", fields=dict(
                delay, popvault_dict="redis:host=127.0.0.1")))
        with dovecot(users, userdb=userdb) as dc:
            # r: its own redis dict holds the state, no file in the home
            dc.pop3("r").quit()
            assert _login_reply(dc, "r").startswith("-ERR [LOGIN-DELAY]")
            assert [k for k in _redis_keys(port) if "last-login" in k], \
                _redis_keys(port)
            assert not os.path.exists(os.path.join(dc.home("r"),
                                                   "popvault.dict"))
            # f on the same server: the file default
            dc.pop3("f").quit()
            assert _login_reply(dc, "f").startswith("-ERR [LOGIN-DELAY]")
            assert "last-login" in _last_login(dc, "f")
            assert len(_redis_keys(port)) == 1, _redis_keys(port)
            _no_errors(dc)
            # an invalid dict fails that user's login, loudly
            for user in [u for u in ("bad", "uri") if u in dc.users]:
                since = dc.log_size()
                assert _login_reply(dc, user).startswith("-ERR [SYS/TEMP]")
                line = dc.wait_log(r"pop3\(\w+\): Error: popvault: user %s: "
                                   r"Invalid popvault_dict.*" % user,
                                   since=since).group(0)
                assert "nosuchdriver" in line or "dict URI" in line, line
                assert "redis:" not in line and ":x" not in line, line
            # the others are unaffected
            assert _login_reply(dc, "r").startswith("-ERR [LOGIN-DELAY]")
            assert _login_reply(dc, "f").startswith("-ERR [LOGIN-DELAY]")


def test_login_delay_dict_per_user():
    _login_delay_dict_per_user("passwd-file")


def test_login_delay_dict_per_user_sql():
    _login_delay_dict_per_user("sqlite")


def _capa_before_login(dc):
    p = dc.pop3()
    r, lines = p.multi("CAPA")
    assert r == "+OK", r
    p.close()
    return lines


def test_capa_before_login_aggregate():
    users = [User("del", fields={"popvault_after_retr": "delete"}),
             User("slow", fields={"popvault_login_delay": "15m"}),
             User("plain")]
    with dovecot(users, login_env={"POPVAULT_LOGIN_EXPIRE": "0:USER",
                                   "POPVAULT_LOGIN_DELAY": "900:USER"}) as dc:
        lines = _capa_before_login(dc)
        assert "EXPIRE 0 USER" in lines and "LOGIN-DELAY 900 USER" in lines, \
            lines
        # pop3-login's own lines stay, in order, with ours before the dot
        assert lines[0] == "CAPA" and lines[-2:] == ["EXPIRE 0 USER",
                                                    "LOGIN-DELAY 900 USER"]
        assert any(l.startswith("SASL") for l in lines), lines
        # after login each user sees exact values (RFC 2449 6.0: "USER"
        # before login promises the user's own value after it), users
        # without popvault settings or without a delay included
        assert _capa(dc, "del") == DOVECOT_CAPA + ["EXPIRE 0",
                                                   "LOGIN-DELAY 0"]
        assert _capa(dc, "slow") == DOVECOT_CAPA + ["EXPIRE NEVER",
                                                    "LOGIN-DELAY 900"]
        assert _capa(dc, "plain") == DOVECOT_CAPA + ["EXPIRE NEVER",
                                                     "LOGIN-DELAY 0"]
        # pipelined before login: both replies intact
        p = dc.pop3()
        p.send("CAPA\r\nUSER del\r\nCAPA\r\n")
        assert p.readline() == "+OK"
        first = p.read_multiline()
        assert p.readline().startswith("+OK")
        assert p.readline() == "+OK"
        assert p.read_multiline() == first
        p.close()

    # without the login plugin configured, pop3-login says nothing
    with dovecot(users) as dc:
        assert not any(l.startswith(("EXPIRE", "LOGIN-DELAY"))
                       for l in _capa_before_login(dc))


def test_capa_before_login_uniform_values():
    with dovecot([User("u", fields={"popvault_retain_downloaded": "30d"})],
                 login_env={"POPVAULT_LOGIN_EXPIRE": "30"}) as dc:
        lines = _capa_before_login(dc)
        assert "EXPIRE 30" in lines and \
            not any(l.startswith("LOGIN-DELAY") for l in lines), lines

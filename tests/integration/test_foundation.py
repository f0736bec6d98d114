"""The module loads everywhere, stays out of the way when unconfigured, and
refuses users whose popvault_* settings are wrong."""

import re

from harness import Dovecot, User, by_version, dovecot, make_message


def _process_lines(log, proc, user):
    return [l for l in log.splitlines()
            if re.search(r"\b%s\(%s\)" % (proc, user), l)]


def test_module_loads_in_every_mail_process():
    users = [User("alice", fields={"popvault_after_retr": "keep"})]
    with dovecot(users) as dc:
        dc.deliver("alice", make_message("over lmtp"))
        rc, err = dc.lda("alice", make_message("over dovecot-lda"))
        assert rc == 0, err
        p = dc.pop3("alice")
        assert p.stat()[0] == 2
        assert p.quit().startswith("+OK")
        i = dc.imap("alice")
        status, _ = i.command("SELECT INBOX")
        assert " OK" in status, status
        i.logout()
        _, out, _ = dc.doveadm("popvault", "status", "-u", "alice")
        assert re.search(r"^alice\s+active\s+keep\s+expunge",
                         out.splitlines()[1]), out

        log = dc.wait_log(r"imap\(alice\).*popvault: active") and dc.log()
        for proc in ("lmtp", "lda", "pop3", "imap"):
            lines = _process_lines(log, proc, "alice")
            assert any("popvault: active: after_retr=keep" in l
                       for l in lines), "no popvault debug line from %s" % proc
        # the pop3-only hook ran in pop3 and nowhere else
        assert any("popvault: pop3 session started" in l
                   for l in _process_lines(log, "pop3", "alice"))
        assert "pop3 session started" not in "\n".join(
            _process_lines(log, "imap", "alice"))
        assert dc.log_errors() == [], dc.log_errors()


def test_unconfigured_user_sees_plain_dovecot_pop3():
    """The same POP3 script against Dovecot with and without popvault
    loaded gives the same transcript, and later sessions see the same."""

    def run(with_popvault):
        with dovecot([User("bob")], with_popvault=with_popvault,
                     extra_conf=by_version("pop3_uidl_format = %u\n",
                                           "pop3_uidl_format = %{uid}\n")
                     ) as dc:
            for n in range(4):
                dc.deliver("bob", make_message("msg %d" % n,
                                               body="body %d\r\n" % n,
                                               msgid="<m%d@test>" % n,
                                               date="Sat, 21 Nov 2026 10:00:00 +0000"))
            p = dc.pop3("bob")
            t = [p.stat(), p.list(), p.uidl(), p.retr(2),
                 p.command("TOP 3 0"), p.read_multiline(),
                 p.command("DELE 1"), p.command("DELE 4"),
                 p.command("RETR 1"), p.stat(), p.quit()]
            p = dc.pop3("bob")
            t += [p.stat(), p.uidl(), p.retr(1)]
            p.command("QUIT")
            i = dc.imap("bob")
            st, out = i.command("SELECT INBOX")
            t.append(re.search(rb"\* (\d+) EXISTS", out).group(1))
            st, out = i.command("FETCH 1:* (FLAGS)")
            t.append(sorted(re.findall(rb"FLAGS \(([^)]*)\)", out)))
            i.logout()
            log = dc.log()
            if with_popvault:
                assert "popvault: no popvault_* settings for this user" in log
                assert "popvault: active" not in log
            assert dc.log_errors() == [], dc.log_errors()
            return t

    def normalized(transcript):
        # LMTP's Received: header carries a session id and a time
        text = repr(transcript)
        text = re.sub(r"\\tid [A-Za-z0-9+/]+", "", text)
        return re.sub(r"for <bob>; [^\\']+", "", text)

    plain = run(False)
    ours = run(True)
    assert normalized(plain) == normalized(ours), "\n%r\n!=\n%r" % (plain, ours)
    # the script really did something: 4 messages, 2 deleted at QUIT
    assert plain[0][0] == 4 and plain[11][0] == 2


def test_invalid_setting_refuses_only_that_user():
    users = [User("good", fields={"popvault_after_retr": "delete"}),
             User("bad", fields={"popvault_after_retr": "bogus"}),
             User("typo", fields={"popvault_afer_retr": "delete"}),
             User("badmove", fields={"popvault_on_dele": "move:../etc"})]
    with dovecot(users) as dc:
        for user, setting, value in (
                ("bad", "popvault_after_retr", "bogus"),
                ("typo", "popvault_afer_retr", None),
                ("badmove", "popvault_on_dele", "move:../etc")):
            p = dc.pop3()
            assert p.command("USER " + user).startswith("+OK")
            r = p.command("PASS " + dc.users[user].password)
            assert r.startswith("-ERR [SYS/TEMP]"), r
            p.close()
            # logged before the user's log prefix exists: the line
            # itself names the user, the setting and the value
            line = dc.wait_log(r"pop3\(\w+\): Error: popvault: user %s: .*%s.*"
                               % (user, re.escape(setting))).group(0)
            if value is not None:
                assert "%s=%s" % (setting, value) in line, line
            # delivery fails temporarily rather than storing with a guess
            c = dc.lmtp()
            r = c.deliver(user, make_message("held"))[user]
            c.quit()
            assert r.startswith("4"), r

        # the other user is unaffected
        dc.deliver("good", make_message("fine"))
        p = dc.pop3("good")
        assert p.stat()[0] == 1
        p.quit()
        # nothing was stored for the refused users
        for user in ("bad", "typo", "badmove"):
            rc, out, err = dc.doveadm("mailbox", "status", "-u", user,
                                      "messages", "INBOX", check=False)
            assert rc != 0 or "messages=0" in out, out + err


def test_sql_userdb_settings_per_user():
    """popvault_* columns from a real SQLite userdb override plugin {},
    NULL falls back to it, and a bad value refuses only that user."""
    users = [User("s1", fields={"popvault_after_retr": "move:Archive",
                                "popvault_retain_unread": None}),
             User("s2", fields={"popvault_after_retr": None,
                                "popvault_retain_unread": "30d"}),
             User("s3", fields={"popvault_after_retr": "sideways",
                                "popvault_retain_unread": None})]
    with dovecot(users, userdb="sqlite",
                 plugin={"popvault_after_retr": "hide"}) as dc:
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "status", "-u", "s1")
        assert "after_retr=move:Archive" in out and \
            "retain_unread=never" in out, out
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "status", "-u", "s2")
        assert "after_retr=hide" in out and "retain_unread=30d" in out, out
        rc, out, err = dc.doveadm("popvault", "status", "-u", "s3",
                                  check=False)
        assert rc != 0
        assert "popvault_after_retr=sideways" in out + err, out + err
        p = dc.pop3()
        p.command("USER s3")
        assert p.command("PASS pw-s3").startswith("-ERR [SYS/TEMP]")
        p.close()
        p = dc.pop3("s1")
        p.quit()


def test_plugin_settings_apply_to_all_users():
    with dovecot([User("u1"), User("u2", fields={"popvault_on_dele": "keep"})],
                 plugin={"popvault_on_dele": "hide",
                         "popvault_retain_downloaded": "14d"}) as dc:
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "status", "-A")
        lines = sorted(out.strip().splitlines())
        assert len(lines) == 2, out
        assert "on_dele=hide" in lines[0] and "retain_downloaded=14d" in lines[0]
        assert "on_dele=keep" in lines[1] and "retain_downloaded=14d" in lines[1]


def test_demo_serves_curl():
    """README's demo command starts, and a real POP3 client can use it."""
    import os
    import subprocess
    import sys
    import harness
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.Popen([sys.executable, os.path.join(here, "demo.py"),
                          "--build-dir", harness.BUILD_DIR, "--seconds", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port = None
        version = None
        for line in p.stdout:
            m = re.search(rb"POP3  127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
            m = re.search(rb"popvault demo: Dovecot (\S+) running", line)
            if m:
                version = m.group(1).decode()
            if b"Ctrl-C" in line:
                break
        assert port, "demo printed no POP3 port"
        # the Dovecot it runs on (2.3 on Debian 12, 2.4 on Debian 13)
        assert version == "%d.%d" % harness.DOVECOT_VERSION, version
        out = subprocess.run(["curl", "-s", "--max-time", "10",
                              "pop3://keep:demo@127.0.0.1:%d/" % port],
                             capture_output=True, timeout=20).stdout
        assert out.decode().split() [0:1] == ["1"], out
        assert len(out.decode().strip().splitlines()) == 3, out
        msg = subprocess.run(["curl", "-s", "--max-time", "10",
                              "pop3://keep:demo@127.0.0.1:%d/2" % port],
                             capture_output=True, timeout=20).stdout
        assert b"sample message 2 for keep" in msg, msg
    finally:
        p.terminate()
        p.wait(timeout=20)


def test_demo_shows_encryption_at_rest():
    """The demo has an encrypting user in master-key mode (vault) and one
    in password mode (locked): their mail is ciphertext on disk, reads
    back over POP3, and the commands the demo prints to show it work as
    printed (issue 15 item 13)."""
    import os
    import poplib
    import subprocess
    import sys
    import harness
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.Popen([sys.executable, os.path.join(here, "demo.py"),
                          "--build-dir", harness.BUILD_DIR, "--seconds", "120"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = []
        for line in p.stdout:
            out.append(line.decode())
            if "Ctrl-C" in out[-1]:
                break
        text = "".join(out)
        assert re.search(r"^\s+vault\s+stored encrypted", text, re.M), text
        assert re.search(r"^\s+locked\s+stored encrypted", text, re.M), text
        port = int(re.search(r"POP3  127\.0\.0\.1:(\d+)", text).group(1))
        home = re.search(r"running from (\S+)", text).group(1) + "/home"
        grep_text = re.search(r"^\s+(grep -rl 'sample message' .*)$", text,
                              re.M).group(1)
        grep_magic = re.search(r"^\s+(LC_ALL=C grep -rlaP .*)$", text,
                               re.M).group(1)

        def run(cmd):
            r = subprocess.run(["bash", "-c", cmd], capture_output=True,
                               text=True, timeout=20)
            return sorted(r.stdout.split())

        def owners(paths):
            return sorted({os.path.relpath(f, home).split("/")[0]
                           for f in paths})

        with_text, with_magic = run(grep_text), run(grep_magic)
        assert owners(with_text) == ["plain"] and len(with_text) == 3, \
            with_text
        assert owners(with_magic) == ["locked", "vault"] and \
            len(with_magic) == 6, with_magic
        for user in ("vault", "locked"):
            # the demo's own key: vault's under the master key, locked's
            # under its password
            keys = os.listdir(os.path.join(home, user, ".popvault", "keys"))
            assert [k for k in keys if k.endswith(".key")], keys
            c = poplib.POP3("127.0.0.1", port, timeout=20)
            c.user(user)
            c.pass_("demo")
            assert c.stat()[0] == 3
            body = b"\n".join(c.retr(2)[1])
            c.quit()
            assert b"This is sample message 2 for %s." % user.encode() \
                in body, body
        # still ciphertext after the reads (maildir new/ -> cur/)
        assert len(run(grep_magic)) == 6 and len(run(grep_text)) == 3
    finally:
        p.terminate()
        p.wait(timeout=20)

"""Every Dovecot configuration that README.md and docs/ show, and the
userdb examples in dovecot-conf/userdb/, is accepted exactly as written by
the doveconf of the Dovecot it is written for (issue 16).

In the Markdown files a configuration block says its version in its fence:
```dovecot-2.3, ```dovecot-2.4, or ```dovecot for a form both take. Each
host checks its own version's blocks and names the other version's, which
the other host checks (CI runs both). The main forms also carry a real
login: the global settings, passwd-file as passdb and userdb, SQL, master
users. (dovecot-conf/conf.d/ is checked by test_settings_hosts and
test_events.)"""

import os
import re
import sqlite3
import subprocess

from harness import DOVECOT, DOVECOT_24, Dovecot, User, make_message

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HOST = "2.4" if DOVECOT_24 else "2.3"
DOC_FILES = ["README.md"] + ["docs/" + f for f in
                             sorted(os.listdir(os.path.join(ROOT, "docs")))
                             if f.endswith(".md")]
# what makes an untagged code block a Dovecot configuration
CONF_LINE = re.compile(r"^\s*(plugin \{|popvault_\w+ = |mail_plugins\b|"
                       r"login_plugins\b|import_environment\b|passdb\b|"
                       r"userdb\b|metric |event_exporter |namespace )", re.M)


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def doc_blocks():
    """[(file:line, info string, text)] of every fenced block."""
    out = []
    for rel in DOC_FILES:
        text = _read(rel)
        for m in re.finditer(r"^```([^\n]*)\n(.*?)^```$", text, re.M | re.S):
            line = text.count("\n", 0, m.start()) + 1
            out.append(("%s:%d" % (rel, line), m.group(1).strip(),
                        m.group(2)))
    return out


def blocks_for(version):
    return [(where, text) for where, info, text in doc_blocks()
            if info in ("dovecot", "dovecot-" + version)]


def block(rel, version, contains):
    """The one block of rel for version that contains the given text."""
    found = [text for where, text in blocks_for(version)
             if where.startswith(rel + ":") and contains in text]
    assert len(found) == 1, (rel, version, contains, found)
    return found[0]


def test_every_config_block_names_its_version():
    untagged = [where for where, info, text in doc_blocks()
                if not info.startswith("dovecot") and CONF_LINE.search(text)]
    assert untagged == [], "configuration blocks without ```dovecot-2.x: %s" \
        % untagged
    # settings.md and the admin guide show both syntaxes
    for rel in ("docs/settings.md", "docs/admin-guide.md"):
        for version in ("2.3", "2.4"):
            assert [w for w, _ in blocks_for(version)
                    if w.startswith(rel + ":")], (rel, version)


class _ConfigOnly(Dovecot):
    """The harness's configuration, written but not started."""

    def start_again(self):
        return self


class _DocDovecot(Dovecot):
    """The harness's configuration plus a documented one: without the
    harness's passdb/userdb blocks the documented one replaces (drop), and
    with the documented one's file paths (paths: {path: name}) pointing
    into the test's directory. Nothing else of it is changed."""

    def __init__(self, users, drop=(), paths=None, **kwargs):
        super().__init__(users, **kwargs)
        self.drop = drop
        self.paths = dict(paths or {})

    def file(self, path):
        return os.path.join(self.tmp, self.paths[path])

    def config(self):
        # the harness's own blocks only, then the documented configuration
        extra, self.extra_conf = self.extra_conf, ""
        conf = super().config()
        self.extra_conf = extra
        for kind in self.drop:
            conf, n = re.subn(r"^%s\b[^{\n]*\{\n[^{}]*?^\}\n" % kind, "",
                              conf, flags=re.M)
            assert n == 1, (kind, conf)
        conf += extra + "\n"
        for path in self.paths:
            conf = conf.replace(path, self.file(path))
        return conf


def _doveconf(path):
    doveconf = os.path.join(os.path.dirname(DOVECOT), "doveconf")
    if not os.access(doveconf, os.X_OK):
        doveconf = "doveconf"
    return subprocess.run([doveconf, "-c", path, "-n"], capture_output=True,
                          text=True)


def _accepted(conf, **kwargs):
    """doveconf -n of the harness's configuration plus conf."""
    with _ConfigOnly([User("u")], extra_conf=conf, **kwargs) as dc:
        p = _doveconf(dc.config_path)
    assert p.returncode == 0, (conf, p.stderr)
    for m in re.finditer(r"^\s*(popvault_\w+ = \S.*)$", conf, re.M):
        assert m.group(1) in p.stdout, (m.group(1), p.stdout)
    return p.stdout


def test_doc_blocks_accepted_by_this_doveconf():
    mine = blocks_for(HOST)
    other = blocks_for("2.3" if DOVECOT_24 else "2.4")
    assert len(mine) >= 10, mine
    for where, text in mine:
        try:
            _accepted(text, with_popvault="mail_plugins" not in text)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (where, e))
    print("checked %d Dovecot %s blocks; not here: %d blocks of the other "
          "version (its host checks them)" % (len(mine), HOST,
                                              len([w for w, _ in other if
                                                   (w, _) not in mine])))


def test_ldap_example_accepted():
    """2.4: ldap-24.conf.example is dovecot.conf syntax, which doveconf
    checks (with dovecot-ldap installed: setup.sh, trixie-root.sh). 2.3:
    ldap.conf.ext.example is an args file only the auth process reads, at
    its start: a login through the passwd-file userdb before it starts the
    auth process, which would stop on a setting it does not know."""
    example = os.path.join(ROOT, "dovecot-conf", "userdb",
                           "ldap-24.conf.example" if DOVECOT_24 else
                           "ldap.conf.ext.example")
    if DOVECOT_24:
        conf = _read(os.path.relpath(example, ROOT))
        out = _accepted(conf)
        assert re.search(r"popvault_after_retr = %\{ldap:\w+\}", out), out
    else:
        conf = "userdb {\n  driver = ldap\n  args = %s\n}\n" % example
    with Dovecot([User("u")], extra_conf=conf) as dc:
        _pop3_login(dc, "u", dc.users["u"].password).quit()
        assert "Fatal" not in dc.log(), dc.log_tail()


def _status(dc, user):
    _, out, _ = dc.doveadm("-f", "flow", "popvault", "status", "-u", user)
    return out


def _pop3_login(dc, user, password):
    p = dc.pop3()
    p.command("USER " + user)
    r = p.command("PASS " + password)
    assert r.startswith("+OK"), r
    return p


def test_global_settings_block_logs_in():
    """settings.md's first block: popvault loaded and defaults for every
    user, on this host's syntax."""
    conf = block("docs/settings.md", HOST, "popvault_retain_downloaded")
    with Dovecot([User("u")], extra_conf=conf, with_popvault=False) as dc:
        out = _status(dc, "u")
        assert "after_retr=keep" in out and "retain_downloaded=14d" in out, \
            out
        dc.deliver("u", make_message("one"))
        p = _pop3_login(dc, "u", dc.users["u"].password)
        assert p.stat()[0] == 1
        if DOVECOT_24:
            # protocol pop3 { popvault_on_dele = hide }: gone for POP3,
            # still there for IMAP
            assert p.command("DELE 1").startswith("+OK")
        assert p.quit().startswith("+OK")
        p = _pop3_login(dc, "u", dc.users["u"].password)
        assert p.stat()[0] == (0 if DOVECOT_24 else 1)
        p.quit()
        if DOVECOT_24:
            st, lines = dc.imap("u").command("STATUS INBOX (MESSAGES)")
            assert b"MESSAGES 1" in lines, lines


def _home_root(dc):
    home = os.path.join(dc.tmp, "vmail")
    os.mkdir(home)
    os.chown(home, dc.mail_uid, dc.mail_gid)
    return home


def _passwd_line(dc, line, root):
    """A passwd-file line with this server's uid, gid and a home under
    root; name, password and extra fields as written."""
    fields = line.split(":")
    fields[2:4] = [str(dc.mail_uid), str(dc.mail_gid)]
    fields[5] = os.path.join(root, fields[0])
    return ":".join(fields) + "\n"


USERS = {"/etc/dovecot/users": "example-users"}


def test_passwd_file_passdb_and_userdb_log_in():
    """The admin guide's passwd-file line and its passdb/userdb blocks."""
    line = re.search(r"^```\n(alice:\{PLAIN\}secret:.*)\n```",
                     _read("docs/admin-guide.md"), re.M).group(1)
    conf = block("docs/admin-guide.md", HOST, "passwd-file")
    with _DocDovecot([User("u")], drop=("passdb", "userdb"), paths=USERS,
                     extra_conf=conf) as dc:
        # passwd-file is read at the first lookup
        with open(dc.file("/etc/dovecot/users"), "w") as f:
            f.write(_passwd_line(dc, line, _home_root(dc)))
        _pop3_login(dc, "alice", "secret").quit()
        out = _status(dc, "alice")
        assert "after_retr=move:Archive" in out and \
            "retain_downloaded=14d" in out, out


def test_passwd_file_example_fields_reach_the_users():
    """dovecot-conf/userdb/passwd-file.example's lines as the userdb
    (their password hashes are placeholders: the passdb is the
    harness's)."""
    example = _read("dovecot-conf/userdb/passwd-file.example")
    lines = [l for l in example.splitlines() if l and not l.startswith("#")]
    names = [l.split(":")[0] for l in lines]
    conf = block("docs/admin-guide.md", HOST, "passwd-file")
    conf = re.sub(r"^passdb\b[^{]*\{\n[^{}]*?^\}\n", "", conf, flags=re.M)
    with _DocDovecot([User(n) for n in names], drop=("userdb",),
                     paths=USERS, extra_conf=conf) as dc:
        root = _home_root(dc)
        with open(dc.file("/etc/dovecot/users"), "w") as f:
            f.writelines(_passwd_line(dc, l, root) for l in lines)
        for l in lines:
            name = l.split(":")[0]
            out = _status(dc, name)
            for k, v in re.findall(r"userdb_popvault_(\w+)=(\S+)", l):
                # status prints some durations in seconds (15m: 900s)
                m = re.fullmatch(r"(\d+)([mhd])", v)
                secs = m and "%ds" % (int(m.group(1)) *
                                      {"m": 60, "h": 3600,
                                       "d": 86400}[m.group(2)])
                assert re.search(r"\b%s=(%s|%s)\s" % (
                    k, re.escape(v), secs), out), (name, k, v, out)
            _pop3_login(dc, name, dc.users[name].password).quit()


def test_sql_example_logs_in():
    """dovecot-conf/userdb/sql.conf.ext.example (2.3, an args file) or
    sql-24.conf.example (2.4, dovecot.conf syntax) with the table its
    comment creates; only the database's path is this test's own."""
    name = "sql-24.conf.example" if DOVECOT_24 else "sql.conf.ext.example"
    path = os.path.join(ROOT, "dovecot-conf", "userdb", name)
    example = _read("dovecot-conf/userdb/" + name)
    create = "\n".join(l[2:] for l in example.splitlines()
                       if re.match(r"# (CREATE|  |\);)", l))
    if DOVECOT_24:
        conf = example
    else:
        # 2.3 reads the file itself, named by the userdb block
        conf = "userdb {\n  driver = sql\n  args = %s\n}\n" % path
    with _DocDovecot([User("bob")], drop=("userdb",), extra_conf=conf,
                     paths={"/etc/dovecot/users.sqlite": "users.sqlite"}
                     if DOVECOT_24 else {}) as dc:
        db = os.path.join(dc.tmp, "users.sqlite")
        if not DOVECOT_24:
            # the args file as written but for the database's path
            ext = os.path.join(dc.tmp, "example-sql.conf.ext")
            with open(ext, "w") as f:
                f.write(example.replace("/etc/dovecot/users.sqlite", db))
            with open(dc.config_path) as f:
                text = f.read()
            with open(dc.config_path, "w") as f:
                f.write(text.replace(path, ext))
            dc.stop()
            dc.start_again()
        con = sqlite3.connect(db)
        con.execute(create)
        con.execute("INSERT INTO users (username, home, uid, gid, "
                    "popvault_after_retr, popvault_retain_downloaded) "
                    "VALUES ('bob', ?, ?, ?, 'move:Archive', '14d')",
                    (os.path.join(_home_root(dc), "bob"), dc.mail_uid,
                     dc.mail_gid))
        con.commit()
        con.close()
        os.chmod(db, 0o644)
        _pop3_login(dc, "bob", dc.users["bob"].password).quit()
        out = _status(dc, "bob")
        # NULL columns fall back to the default
        assert "after_retr=move:Archive" in out and \
            "retain_downloaded=14d" in out and "on_dele=expunge" in out, out
        # the iterate_query: -A finds bob
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "status", "-A")
        assert "after_retr=move:Archive" in out, out


def test_master_user_block_logs_in():
    """encryption.md's master passdb: alice*admin logs in as alice."""
    conf = block("docs/encryption.md", HOST, "auth_master_user_separator")
    with _DocDovecot([User("alice")], extra_conf=conf, paths={
            "/etc/dovecot/master-users": "example-master-users"}) as dc:
        with open(dc.file("/etc/dovecot/master-users"), "w") as f:
            f.write("admin:{PLAIN}adminpw\n")
        dc.deliver("alice", make_message("for alice"))
        p = _pop3_login(dc, "alice*admin", "adminpw")
        assert p.stat()[0] == 1
        p.quit()
        p = dc.pop3()
        p.command("USER alice*admin")
        assert p.command("PASS wrong").startswith("-ERR")
        p.close()


def test_conf_examples_name_every_setting():
    """90-popvault.conf (2.3) and 90-popvault-24.conf each show every
    setting of the parser's table."""
    from test_docs import parser_settings
    for name in ("90-popvault.conf", "90-popvault-24.conf"):
        text = _read("dovecot-conf/conf.d/" + name)
        shown = set(re.findall(r"^\s*#(popvault_\w+)\b", text, re.M))
        assert parser_settings() - shown == set(), \
            (name, sorted(parser_settings() - shown))

"""Real POP3 clients over TLS against every policy.

fetchmail (keep + uidl, and without keep), mpop, getmail6, curl and
Python's poplib talk to one Dovecot per client with a self-signed
certificate made by the test ("ssl = required", POP3S and STLS). For each
case (after_retr delete / hide / move:Archive, on_dele move:Trash,
login_delay in both modes, encryption) one user; what the client stored
locally (the files it wrote) and what the server kept (IMAP inventory)
are checked. An encrypting user's bodies must equal a plain user's byte
for byte. Every client login must have used TLS (pop3-login's log line).
Thunderbird has its own test (test_thunderbird.py, make check-thunderbird)."""

import os
import pwd
import re
import shutil
import ssl
import subprocess
import tempfile
import poplib

from harness import User, make_message
from crypt_util import MAGIC, crypt_dovecot, enc_fields, message_files
from policy_util import imap_inventory

HIDDEN = "$POP3Hidden"
# a dot-stuffed line, a line without CR on the way in, a long body: what
# a client stores must survive pop3's and the client's conversions alike
BODY = ("first line\r\n.a line starting with a dot\r\n..two dots\r\n"
        + "".join("line %04d %s\r\n" % (i, "x" * 60) for i in range(300)))

CASES = {
    "del": {"popvault_after_retr": "delete"},
    "hide": {"popvault_after_retr": "hide"},
    "move": {"popvault_after_retr": "move:Archive"},
    "trash": {"popvault_on_dele": "move:Trash"},
    "ldref": {"popvault_login_delay": "1h",
              "popvault_login_delay_mode": "refuse"},
    "ldempty": {"popvault_login_delay": "1h"},
    "enc": enc_fields(),
    "plain": None,
}


def _message(subject):
    # identical bytes for every user: the encryption case compares them
    return make_message(subject, body=BODY,
                        msgid="<%s@clients.popvault.test>" % subject,
                        date="Mon, 30 Nov 2026 12:00:00 +0000")


def _subject(data):
    m = re.search(rb"^Subject: (\S+)", data, re.M)
    return m.group(1).decode() if m else None


def _body(data):
    data = data.replace(b"\r\n", b"\n")
    return data.split(b"\n\n", 1)[1]


def _maildir(path):
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            with open(os.path.join(d, name), "rb") as f:
                out.append(f.read())
    return out


def _make_maildir(path):
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)


def _not_root(work):
    """getmail refuses to deliver as root: run it as nobody then, in a
    work directory nobody owns (subprocess.run keyword arguments)."""
    if os.getuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    for d, _, files in os.walk(work):
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
        for name in files:
            os.chown(os.path.join(d, name), nobody.pw_uid, nobody.pw_gid)
    return {"user": nobody.pw_uid, "group": nobody.pw_gid,
            "extra_groups": []}


# --- the clients -----------------------------------------------------------
# Each: run(dc, user, work, delete) -> returncode; stored(work) -> the
# messages it wrote, as bytes. work is the client's own directory for the
# user (config, UIDL state, local mail). delete: the client DELEs what it
# downloaded (its "no keep" mode).

class Fetchmail:
    def __init__(self, uidl):
        # uidl: "keep" + "uidl" over POP3S (the leave-on-server setup);
        # else no keep (RETR/TOP + DELE) over STLS
        self.uidl = uidl
        self.name = "fmuidl" if uidl else "fmnokeep"
        self.deletes = not uidl

    def run(self, dc, user, work, delete):
        assert delete == self.deletes
        store = os.path.join(work, "store")
        os.makedirs(store, exist_ok=True)
        if self.uidl:
            port, tls, mode, uidl = dc.ports["pop3s"], "ssl", "keep", "uidl"
        else:
            # sslproto without ssl: STLS, and sslcertck makes it mandatory
            port, tls, mode, uidl = (dc.ports["pop3"], "sslproto tls1.2+",
                                     "nokeep", "")
        rc = os.path.join(work, "fetchmailrc")
        with open(rc, "w") as f:
            f.write('set no syslog\nset invisible\n'
                    # the certificate names localhost
                    'poll localhost via 127.0.0.1 protocol pop3 port %d '
                    'auth password %s\n'
                    '  user "%s" password "%s" %s\n'
                    '  %s sslcertck sslcertfile "%s" sslcommonname localhost\n'
                    '  mda "/bin/sh -c \'cat > %s/m.$$\'"\n'
                    % (port, uidl, user, dc.users[user].password, mode, tls,
                       dc.tls_cert, store))
        os.chmod(rc, 0o600)
        env = dict(os.environ, FETCHMAILHOME=work, HOME=work)
        p = subprocess.run(["fetchmail", "-f", rc, "--nosyslog", "-v"],
                           capture_output=True, timeout=60, env=env)
        self.output = p.stdout + p.stderr
        return 0 if p.returncode == 1 else p.returncode  # 1: no new mail

    def stored(self, work):
        store = os.path.join(work, "store")
        out = []
        for name in sorted(os.listdir(store)) if os.path.isdir(store) else ():
            with open(os.path.join(store, name), "rb") as f:
                out.append(f.read())
        return out


class Mpop:
    name = "mpop"
    deletes = None  # either

    def run(self, dc, user, work, delete):
        md = os.path.join(work, "Maildir")
        _make_maildir(md)
        conf = os.path.join(work, "mpoprc")
        with open(conf, "w") as f:
            f.write("defaults\ntls on\ntls_starttls on\ntls_trust_file %s\n"
                    "account default\nhost 127.0.0.1\nport %d\nuser %s\n"
                    "password %s\nauth user\ndelivery maildir %s\n"
                    "keep %s\nuidls_file %s/uidls\n"
                    % (dc.tls_cert, dc.ports["pop3"], user,
                       dc.users[user].password, md,
                       "off" if delete else "on", work))
        os.chmod(conf, 0o600)
        p = subprocess.run(["mpop", "-C", conf, "-q", "default"],
                           capture_output=True, timeout=60,
                           env=dict(os.environ, HOME=work))
        self.output = p.stdout + p.stderr
        return p.returncode

    def stored(self, work):
        return _maildir(os.path.join(work, "Maildir"))


class Getmail:
    name = "getmail"
    deletes = None

    def run(self, dc, user, work, delete):
        md = os.path.join(work, "Maildir")
        _make_maildir(md)
        rc = os.path.join(work, "getmailrc")
        with open(rc, "w") as f:
            f.write("[retriever]\ntype = SimplePOP3SSLRetriever\n"
                    "server = 127.0.0.1\nport = %d\nusername = %s\n"
                    "password = %s\nca_certs = %s\n"
                    "[destination]\ntype = Maildir\npath = %s/\n"
                    "[options]\ndelete = %s\nread_all = false\n"
                    "verbose = 0\n"
                    % (dc.ports["pop3s"], user, dc.users[user].password,
                       dc.tls_cert, md, "true" if delete else "false"))
        p = subprocess.run(["getmail", "--getmaildir", work, "--rcfile", rc],
                           capture_output=True, timeout=60,
                           env=dict(os.environ, HOME=work),
                           **_not_root(work))
        self.output = p.stdout + p.stderr
        return p.returncode

    def stored(self, work):
        return _maildir(os.path.join(work, "Maildir"))


class Curl:
    """A script: LIST, then RETR each listed message in one connection
    (curl reuses it for URLs of one host), DELE them too with delete. In
    the LOGIN-DELAY cases, where a second login is inside the window, the
    first run is RETR 1 alone and the second a LIST."""
    name = "curl"
    deletes = None
    phase = "all"

    def _curl(self, dc, *groups):
        args = ["curl"]
        for i, g in enumerate(groups):
            args += (["--next"] if i else []) + \
                ["-sS", "--cacert", dc.tls_cert] + g
        p = subprocess.run(args, capture_output=True, timeout=60)
        self.output += p.stdout + p.stderr
        return p.returncode

    def run(self, dc, user, work, delete):
        base = "pop3s://%s:%s@127.0.0.1:%d/" % (
            user, dc.users[user].password, dc.ports["pop3s"])
        run_no = len([n for n in os.listdir(work) if n.startswith("list")])
        listing = os.path.join(work, "list.%d" % run_no)
        self.output = b""
        if self.phase == "first":
            return self._curl(dc, [base + "1", "-o",
                                   os.path.join(work, "msg.%d.1" % run_no)])
        rc = self._curl(dc, [base, "-o", listing])
        if rc != 0 or self.phase == "second":
            return rc
        with open(listing, "rb") as f:
            nums = [int(l.split()[0]) for l in f.read().splitlines() if l]
        groups = [["%s%d" % (base, n), "-o",
                   os.path.join(work, "msg.%d.%d" % (run_no, n))]
                  for n in nums]
        if delete:
            groups += [["-X", "DELE", "-I", "%s%d" % (base, n)]
                       for n in nums]
        return self._curl(dc, *groups) if groups else 0

    def stored(self, work):
        out = []
        for name in sorted(os.listdir(work)):
            if name.startswith("msg."):
                with open(os.path.join(work, name), "rb") as f:
                    out.append(f.read())
        return out


class Poplib:
    """Python's poplib over STLS: LIST, RETR each, DELE each (delete),
    QUIT; each message written to a file."""
    name = "poplib"
    deletes = None

    def run(self, dc, user, work, delete):
        ctx = ssl.create_default_context(cafile=dc.tls_cert)
        c = poplib.POP3("127.0.0.1", dc.ports["pop3"], timeout=20)
        try:
            c.stls(context=ctx)
            c.user(user)
            try:
                c.pass_(dc.users[user].password)
            except poplib.error_proto as e:
                self.output = str(e).encode()
                return 1
            for entry in c.list()[1]:
                n = int(entry.split()[0])
                lines = c.retr(n)[1]
                path = os.path.join(work, "msg.%d" % len(os.listdir(work)))
                with open(path, "wb") as f:
                    f.write(b"\r\n".join(lines) + b"\r\n")
                if delete:
                    c.dele(n)
            c.quit()
        finally:
            c.close()
        self.output = b""
        return 0

    def stored(self, work):
        return Curl.stored(self, work)


# --- the matrix --------------------------------------------------------------

def _expect_server(inv, case, deleted):
    """What the server keeps after the client downloaded m1 and m2."""
    inbox = sorted(inv.get("INBOX", {}))
    if deleted:
        # the client's DELE wins over after_retr
        assert inbox == [], inv
        assert sorted(inv.get("Trash", {})) == (
            ["m1", "m2"] if case == "trash" else []), inv
        assert not inv.get("Archive"), inv
    elif case == "del":
        assert inbox == [], inv
    elif case == "hide":
        assert inbox == ["m1", "m2"], inv
        assert all(HIDDEN in f for f in inv["INBOX"].values()), inv
    elif case == "move":
        assert inbox == [] and sorted(inv["Archive"]) == ["m1", "m2"], inv
    else:
        assert inbox == ["m1", "m2"], inv
        assert not inv.get("Trash"), inv
        # kept, and marked read the way RETR marks it; a user without
        # popvault settings gets plain Dovecot, where a TOP marks nothing
        if case != "plain":
            assert all("\\Seen" in f for f in inv["INBOX"].values()), inv


def _run_matrix(client):
    users = [User("%s-%s" % (client.name, case), fields=dict(fields or {}))
             for case, fields in CASES.items()]
    root = tempfile.mkdtemp(prefix="popvault-clients-")
    os.chmod(root, 0o755)
    try:
        with crypt_dovecot(users, tls=True) as dc:
            _matrix(dc, client, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _matrix(dc, client, root):
    def work(user):
        path = os.path.join(root, user)
        os.makedirs(path, exist_ok=True)
        return path

    def run(user, delete, phase="all"):
        client.phase = phase
        try:
            return client.run(dc, user, work(user), delete)
        except subprocess.TimeoutExpired as e:
            # a client that hangs: what it and the server said so far
            raise AssertionError("%s: %s timed out\n%s%s\n%s" % (
                user, client.name, e.stdout or b"", e.stderr or b"",
                dc.log_tail(40))) from e

    for u in dc.users:
        dc.deliver_many(u, [_message("m1")] +
                        ([] if u.endswith(("-ldref", "-ldempty"))
                         else [_message("m2")]))

    stored = {}
    for case in ("del", "hide", "move", "trash", "enc", "plain"):
        if case not in CASES:
            continue
        u = "%s-%s" % (client.name, case)
        deleted = client.deletes if client.deletes is not None else \
            case == "trash"
        rc = run(u, deleted)
        assert rc == 0, (u, rc, client.output)
        got = client.stored(work(u))
        assert sorted(_subject(m) for m in got) == ["m1", "m2"], \
            (u, client.output)
        stored[case] = {_subject(m): m for m in got}
        _expect_server(imap_inventory(dc, u), case, deleted)

    # what an encrypting user's client stored equals a plain user's
    for s in ("m1", "m2") if "enc" in stored else ():
        assert _body(stored["enc"][s]) == _body(stored["plain"][s])
        assert _body(stored["enc"][s]) == _body(_message(s))
    if "enc" in stored:
        # ... and what the server keeps for it is ciphertext
        files = message_files(dc, "%s-enc" % client.name)
        assert len(files) == (0 if client.deletes else 2), files
        for path in files:
            with open(path, "rb") as f:
                assert f.read(len(MAGIC)) == MAGIC, path

    # LOGIN-DELAY: a first full session downloads m1 (kept on the
    # server); inside the window the second changes nothing anywhere
    for case in ("ldref", "ldempty"):
        if case not in CASES:
            continue
        u = "%s-%s" % (client.name, case)
        assert run(u, client.deletes or False, "first") == 0, client.output
        assert [_subject(m) for m in client.stored(work(u))] == ["m1"]
        dc.deliver(u, _message("m2"))
        before = imap_inventory(dc, u)
        since = dc.log_size()
        rc = run(u, client.deletes or False, "second")
        if case == "ldempty":
            # logged in to an empty maildrop: "no new mail", no error
            assert rc == 0, (u, rc, client.output)
        else:
            assert rc != 0, (u, client.output)
        assert [_subject(m) for m in client.stored(work(u))] == ["m1"]
        dc.wait_log(r"pop3\(%s\).*Info: popvault: LOGIN-DELAY" % u,
                    since=since)
        dc.wait_log(r"pop3\(%s\).*Disconnected" % u, since=since)
        assert imap_inventory(dc, u) == before, u
        assert "m2" in before["INBOX"] and \
            "\\Seen" not in before["INBOX"]["m2"], before

    # every client login was encrypted, and nothing was an error
    logins = dc.login_lines()
    assert logins and all(", TLS," in l for l in logins), logins
    assert dc.log_errors() == [], dc.log_errors()


def test_fetchmail_keep_uidl():
    # downloads with "TOP n 99999999", never RETR
    _run_matrix(Fetchmail(uidl=True))


def test_fetchmail_nokeep():
    _run_matrix(Fetchmail(uidl=False))


def test_mpop():
    _run_matrix(Mpop())


def test_getmail6():
    _run_matrix(Getmail())


def test_curl():
    _run_matrix(Curl())


def test_poplib():
    _run_matrix(Poplib())

"""A real Dovecot for popvault's integration tests.

Every server gets a fresh temporary directory with its own base_dir,
state_dir, log file and ports on 127.0.0.1, loads popvault from the build
tree, and is stopped by the PID this harness started. Nothing here talks to
anything but 127.0.0.1.
"""

import contextlib
import email.utils
import os
import pwd
import grp
import re
import shutil
import select
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
SYSTEM_MODULEDIR = "/usr/lib/dovecot/modules"
DOVECOT_LDA = "/usr/lib/dovecot/dovecot-lda"
PLUGIN_SO = "lib20_popvault_plugin.so"
LOGIN_PLUGIN_SO = "lib20_popvault_login_plugin.so"
# a tmpfs every Linux system mounts
MEMORY_TMP = "/dev/shm"
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
# where Dovecot's service binaries live (Debian 12 and 13 alike)
DOVECOT_LIBEXEC = "/usr/lib/dovecot"

BUILD_DIR = os.environ.get("POPVAULT_BUILD_DIR", "")


def _dovecot_version():
    """(major, minor) of the Dovecot under test: DOVECOT_VERSION ("2.4")
    if set, else `dovecot --version`. The configuration is rendered in
    that version's syntax."""
    text = os.environ.get("DOVECOT_VERSION")
    if not text:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run([DOVECOT, "--version"], capture_output=True,
                                  text=True, timeout=10).stdout
    m = re.match(r"\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (2, 3)


DOVECOT_VERSION = _dovecot_version()
DOVECOT_24 = DOVECOT_VERSION >= (2, 4)
SETTINGS_SO = "libpopvault_settings.so"


def _redis_uri(value):
    """(host, port) of the redis dict URIs the tests use, or None."""
    m = re.fullmatch(r"redis:host=([^:]+):port=(\d+)", value)
    return m.groups() if m else None


def _setting_24(key, value):
    """One setting of a test's plugin {} in 2.4 form. popvault_dict is a
    dict URI on 2.3 and a dict filter on 2.4: the redis URIs the tests use
    become that filter."""
    if key == "popvault_dict":
        if _redis_uri(value) is None:
            raise HarnessError("no 2.4 form for popvault_dict=%s" % value)
        return ("popvault_dict {\n  dict redis {\n    redis_host = %s\n"
                "    redis_port = %s\n  }\n}\n" % _redis_uri(value))
    return "%s = %s\n" % (key, value)


def _sql_column(name):
    """A userdb field as an SQLite column; a 2.4 filter path such as
    popvault_dict/dict needs quoting (SQLite's [], which no config
    parser treats as a quote)."""
    return "[%s]" % name if "/" in name else name


def _user_dict_24(value):
    """A user's popvault_dict redis URI as the userdb fields that set the
    popvault_dict filter on 2.4 (docs/settings.md); None for another
    value, which a test then gives 2.4 as it is."""
    if _redis_uri(value) is None:
        return None
    host, port = _redis_uri(value)
    return {"popvault_dict/dict": "redis",
            "popvault_dict/dict/redis/redis_host": host,
            "popvault_dict/dict/redis/redis_port": port}


def by_version(conf_23, conf_24):
    """A test's configuration snippet in the syntax of the Dovecot under
    test."""
    return conf_24 if DOVECOT_24 else conf_23


# scripts/check-sanitize.sh: the plugin is built with ASan+UBSan and
# Dovecot is not, so the sanitizer runtime is preloaded into Dovecot's
# processes only (never into this test process), reports go to files in
# POPVAULT_SANITIZER_LOG_DIR, and the 256 MB default vsz_limit is lifted
# because ASan reserves terabytes of address space for its shadow.
SANITIZER_PRELOAD = os.environ.get("POPVAULT_SANITIZER_PRELOAD", "")
SANITIZER_LOG_DIR = os.environ.get("POPVAULT_SANITIZER_LOG_DIR", "")
SANITIZE_CONF = "default_vsz_limit = 0\n" if SANITIZER_PRELOAD else ""


def sanitizer_env():
    """The environment for Dovecot, doveadm and dovecot-lda; None (inherit)
    when not sanitizing."""
    if not SANITIZER_PRELOAD:
        return None
    log = os.path.join(SANITIZER_LOG_DIR, "report")
    return dict(os.environ, LD_PRELOAD=SANITIZER_PRELOAD,
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:"
                "verify_asan_link_order=0:log_path=" + log,
                UBSAN_OPTIONS="print_stacktrace=1:log_path=" + log)


def faketime_env(**spec):
    """The environment that runs a program under libfaketime; spec is
    FAKETIME="+15d" or FAKETIME_TIMESTAMP_FILE=path. File times stay
    real (NO_FAKE_STAT), so mail keeps its honest received dates."""
    # libfaketime before the ASan runtime: the other order hangs at start
    # (ASan then needs verify_asan_link_order=0)
    preload = ":".join(p for p in (FAKETIME_LIB, SANITIZER_PRELOAD) if p)
    return dict(spec, LD_PRELOAD=preload, FAKETIME_DONT_FAKE_MONOTONIC="1",
                FAKETIME_NO_CACHE="1", NO_FAKE_STAT="1")


def wait_pidfds(fds, timeout=60):
    """Waits until the process of every pidfd in fds has ended: the
    kernel tells, nothing is sampled. timeout is only a safety net."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    pending = set(fds)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("%d processes still running after %d s"
                                 % (len(pending), timeout))
        for fd, _ in poller.poll(left * 1000):
            poller.unregister(fd)
            pending.discard(fd)


class HarnessError(Exception):
    """The test environment itself is broken (binary or port missing)."""


def require_binaries():
    missing = [b for b in (DOVECOT, DOVEADM) if not os.access(b, os.X_OK)]
    for proto in ("pop3", "imap", "lmtp"):
        path = "/usr/lib/dovecot/" + proto
        if not os.access(path, os.X_OK):
            missing.append(path + " (install dovecot-%sd)" % proto)
    if missing:
        raise HarnessError("missing Dovecot binaries: " + ", ".join(missing))
    plugin = os.path.join(BUILD_DIR, ".libs", PLUGIN_SO)
    if not os.path.exists(plugin):
        raise HarnessError("built plugin not found at %s (run make first)"
                           % plugin)
    if DOVECOT_24:
        # 2.4 reads settings modules only from its compiled-in directory and
        # exposes them only when the plugin is there too: run the tests
        # against an installed build (scripts/trixie-root.sh's chroot)
        for built, installed in (
                (os.path.join(BUILD_DIR, ".libs", SETTINGS_SO),
                 os.path.join(SYSTEM_MODULEDIR, "settings", SETTINGS_SO)),
                (plugin, os.path.join(SYSTEM_MODULEDIR, PLUGIN_SO))):
            if not _same_file_content(built, installed):
                raise HarnessError("Dovecot 2.4 needs this build installed: "
                                   "%s differs from %s (make install)"
                                   % (installed, built))


def _same_file_content(a, b):
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


# ports handed out by this process: the kernel may give a just-released
# port again, and two listeners of one config on one port fail start-up
_ports_given = set()


def host_doveadm_args(args):
    """doveadm arguments as the Dovecot under test spells them: 2.4 has no
    plugin {} section, so -o names the setting itself."""
    args = list(args)
    if not DOVECOT_24:
        return args
    return [a[len("plugin/"):] if a.startswith("plugin/") and
            i > 0 and args[i - 1] == "-o" else a
            for i, a in enumerate(args)]


def free_port():
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", 0))
            except OSError as e:
                raise HarnessError("cannot bind a port on 127.0.0.1: %s" % e)
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise HarnessError("no unused port on 127.0.0.1")


def make_message(subject="test", body="Hello.\r\n", sender="sender@example.com",
                 to="user@example.com", msgid=None, extra_headers=(),
                 date=None):
    """An RFC 5322 message as bytes with CRLF line ends."""
    msgid = msgid or "<%s@popvault.test>" % uuid.uuid4().hex
    headers = [
        "From: %s" % sender,
        "To: %s" % to,
        "Subject: %s" % subject,
        "Date: %s" % (date or email.utils.formatdate()),
        "Message-ID: %s" % msgid,
    ]
    headers.extend(extra_headers)
    if isinstance(body, str):
        body = body.encode()
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


class User:
    def __init__(self, name, password=None, fields=None, passdb_fields=None):
        self.name = name
        self.password = password or "pw-" + name
        self.fields = dict(fields or {})
        # passdb extra fields, expanded by the auth process at login
        # (e.g. userdb_popvault_key_password=%w)
        self.passdb_fields = dict(passdb_fields or {})


class LineClient:
    """A plain line-oriented TCP client for exact protocol checks."""

    def __init__(self, port, timeout=20):
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def cmd(self, line):
        self.send(line + "\r\n")

    def readline(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode("latin-1")
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("latin-1")

    def read_multiline(self):
        """Lines of a POP3 multi-line reply up to the dot, un-stuffed."""
        lines = []
        while True:
            line = self.readline()
            if line == ".":
                return lines
            if line.startswith(".."):
                line = line[1:]
            lines.append(line)

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()


class Pop3(LineClient):
    def __init__(self, port):
        super().__init__(port)
        self.greeting = self.readline()

    def command(self, line):
        self.cmd(line)
        return self.readline()

    def login(self, user, password):
        r = self.command("USER " + user)
        if not r.startswith("+OK"):
            return r
        return self.command("PASS " + password)

    def multi(self, line):
        r = self.command(line)
        if not r.startswith("+OK"):
            return r, None
        return r, self.read_multiline()

    def stat(self):
        r = self.command("STAT")
        assert r.startswith("+OK"), r
        _, count, size = r.split()[:3]
        return int(count), int(size)

    def uidl(self):
        r, lines = self.multi("UIDL")
        assert r.startswith("+OK"), r
        return [tuple(l.split(" ", 1)) for l in lines]

    def list(self):
        r, lines = self.multi("LIST")
        assert r.startswith("+OK"), r
        return [(int(a), int(b)) for a, b in (l.split() for l in lines)]

    def retr(self, n):
        r, lines = self.multi("RETR %d" % n)
        assert r.startswith("+OK"), r
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    def quit(self):
        r = self.command("QUIT")
        self.close()
        return r


class Lmtp(LineClient):
    def __init__(self, port):
        super().__init__(port)
        self.greeting = self.readline()
        self.command("LHLO popvault.test", multi=True)

    def command(self, line, multi=False):
        self.cmd(line)
        return self.reply()

    def reply(self):
        lines = []
        while True:
            line = self.readline()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def deliver(self, rcpts, message, sender="sender@example.com"):
        """Returns one reply line per recipient (LMTP gives one each)."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        r = self.command("MAIL FROM:<%s>" % sender)
        assert r.startswith("250"), r
        accepted = []
        replies = {}
        for rcpt in rcpts:
            r = self.command("RCPT TO:<%s>" % rcpt)
            if r.startswith("250"):
                accepted.append(rcpt)
            else:
                replies[rcpt] = r
        if not accepted:
            self.command("RSET")
            return replies
        r = self.command("DATA")
        assert r.startswith("354"), r
        data = message.replace(b"\r\n.", b"\r\n..")
        if data.startswith(b"."):
            data = b"." + data
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        self.send(data + b".\r\n")
        for rcpt in accepted:
            replies[rcpt] = self.reply()
        return replies

    def quit(self):
        with contextlib.suppress(Exception):
            self.command("QUIT")
        self.close()


class Imap(LineClient):
    def __init__(self, port, timeout=20):
        super().__init__(port, timeout=timeout)
        self.greeting = self.readline()
        self.tagn = 0

    def command(self, line):
        """Returns (tagged status line, untagged/literal text as bytes)."""
        self.tagn += 1
        tag = "a%d" % self.tagn
        self.cmd("%s %s" % (tag, line))
        out = b""
        while True:
            l = self.readline()
            m = re.search(r"\{(\d+)\}$", l)
            out += l.encode("latin-1") + b"\r\n"
            if m:
                n = int(m.group(1))
                while len(self.buf) < n:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise EOFError("connection closed in literal")
                    self.buf += chunk
                out += self.buf[:n]
                self.buf = self.buf[n:]
                continue
            if l.startswith(tag + " "):
                return l, out

    def login(self, user, password):
        return self.command('LOGIN "%s" "%s"' % (user, password))[0]

    def logout(self):
        with contextlib.suppress(Exception):
            self.command("LOGOUT")
        self.close()


class Dovecot:
    """One private Dovecot master with its own config, dirs and ports."""

    def __init__(self, users, plugin=None, mail_format="maildir",
                 extra_conf="", userdb="passwd-file", mail_plugins=None,
                 with_popvault=True, debug=True, name="dc", ports=None,
                 login_env=None, module_dir=None, home_root=None, tls=False,
                 master_users=None, clock_services=()):
        self.users = {u.name: u for u in users}
        # {name: password}: a master passdb ("user*master" logins)
        self.master_users = dict(master_users or {})
        # a directory of homes shared with another instance (cluster
        # tests); None: homes live in this instance's own directory
        self.home_root = home_root
        self.plugin = dict(plugin or {})
        self.mail_format = mail_format
        self.extra_conf = extra_conf
        self.userdb = userdb
        self.with_popvault = with_popvault
        self.mail_plugins = mail_plugins
        self.debug = debug
        self.name = name
        self.proc = None
        self.tmp = None
        self.ports = dict(ports or {})
        # popvault_login plugin settings for pop3-login, e.g.
        # {"POPVAULT_LOGIN_EXPIRE": "0:USER"}
        self.login_env = dict(login_env or {})
        # TLS: a self-signed certificate (self.tls_cert, for 127.0.0.1 and
        # localhost) made with the openssl CLI, "ssl = required", a POP3S
        # listener (ports["pop3s"]) and STLS on the plain port
        self.tls = tls
        # popvault's .so files from an installed tree (e.g. an extracted
        # .deb's /usr/lib/dovecot/modules) instead of the build tree
        self.module_dir = module_dir
        # services ("pop3", "auth") whose processes read the time from
        # the test clock: libfaketime with the offset in <tmp>/clock,
        # which advance_clock() moves on. Test-only: popvault itself has
        # no way to move its time.
        self.clock_services = tuple(clock_services)
        self.clock_offset = 0

    # --- lifecycle -------------------------------------------------------

    def start(self):
        require_binaries()
        self.tmp = tempfile.mkdtemp(prefix="popvault-%s-" % self.name)
        os.chmod(self.tmp, 0o755)
        for d in ("run", "state", "home", "modules", "login-modules"):
            os.mkdir(os.path.join(self.tmp, d))
        os.chmod(os.path.join(self.tmp, "run"), 0o755)
        # popvault refuses users with encrypted mail when mail_temp_dir is
        # on a disk (docs/encryption.md): every server gets one in memory
        self.mail_temp_dir = tempfile.mkdtemp(prefix="popvault-%s-"
                                              % self.name, dir=MEMORY_TMP)
        os.chmod(self.mail_temp_dir, 0o1777)
        self._identities()
        self._modules()
        for name in ("pop3", "imap", "lmtp") + (("pop3s",) if self.tls
                                               else ()):
            self.ports.setdefault(name, free_port())
        if self.tls:
            self._make_cert()
        self._write_userdb()
        self.clock_path = os.path.join(self.tmp, "clock")
        self._write_clock()
        self.config_path = os.path.join(self.tmp, "dovecot.conf")
        with open(self.config_path, "w") as f:
            f.write(self.config())
        self.log_path = os.path.join(self.tmp, "dovecot.log")
        open(self.log_path, "a").close()
        return self.start_again()

    def start_again(self):
        """(Re)starts the master on the existing directory and config."""
        since = self.log_size()
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", self.config_path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=sanitizer_env())
        self._wait_ready(since)
        return self

    def _identities(self):
        if os.getuid() == 0:
            # mail processes must not run as root; nobody owns the homes
            self.mail_uid = pwd.getpwnam("nobody").pw_uid
            self.mail_gid = grp.getgrnam("nogroup").gr_gid
            self.internal_user = "dovecot"
            self.login_user = "dovenull"
        else:
            self.mail_uid = os.getuid()
            self.mail_gid = os.getgid()
            me = pwd.getpwuid(os.getuid()).pw_name
            self.internal_user = me
            self.login_user = me
        os.chown(os.path.join(self.tmp, "home"), self.mail_uid, self.mail_gid)
        if self.home_root is not None:
            os.chown(self.home_root, self.mail_uid, self.mail_gid)

    def _modules(self):
        # Dovecot reads mail plugins from one directory: the system's
        # modules plus popvault from the build tree.
        moddir = os.path.join(self.tmp, "modules")
        for entry in os.listdir(SYSTEM_MODULEDIR):
            if entry.endswith(".so") and entry != PLUGIN_SO:
                os.symlink(os.path.join(SYSTEM_MODULEDIR, entry),
                           os.path.join(moddir, entry))
        if self.module_dir is not None:
            plugin = os.path.join(self.module_dir, PLUGIN_SO)
            login_plugin = os.path.join(self.module_dir, "login",
                                        LOGIN_PLUGIN_SO)
        else:
            plugin = os.path.join(BUILD_DIR, ".libs", PLUGIN_SO)
            login_plugin = os.path.join(BUILD_DIR, ".libs", LOGIN_PLUGIN_SO)
        os.symlink(os.path.abspath(plugin), os.path.join(moddir, PLUGIN_SO))
        os.symlink(os.path.abspath(login_plugin),
                   os.path.join(self.tmp, "login-modules", LOGIN_PLUGIN_SO))

    def _make_cert(self):
        self.tls_cert = os.path.join(self.tmp, "cert.pem")
        self.tls_key = os.path.join(self.tmp, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-addext",
             "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", self.tls_key, "-out", self.tls_cert],
            check=True, capture_output=True, timeout=60)
        os.chmod(self.tls_cert, 0o644)

    def _tls_conf(self):
        if not self.tls:
            return "ssl = no\ndisable_plaintext_auth = no\n"
        # Dovecot counts a connection from 127.0.0.1 to 127.0.0.1 as
        # secured: the harness' own plaintext clients still log in, real
        # clients prove TLS through the "TLS" in pop3-login's log line
        return ("ssl = required\nssl_cert = <%s\nssl_key = <%s\n"
                "disable_plaintext_auth = yes\n"
                % (self.tls_cert, self.tls_key))

    def _tls_conf_24(self):
        if not self.tls:
            return "ssl = no\nauth_allow_cleartext = yes\n"
        # as _tls_conf(): 127.0.0.1 counts as secured
        return ("ssl = required\nssl_server_cert_file = %s\n"
                "ssl_server_key_file = %s\nauth_allow_cleartext = no\n"
                % (self.tls_cert, self.tls_key))

    def home(self, user):
        root = self.home_root or os.path.join(self.tmp, "home")
        return os.path.join(root, user)

    def _write_userdb(self):
        # userdb="passwd-file-both": one passwd-file is passdb and userdb,
        # as most small setups (dovecot-conf/userdb/passwd-file.example)
        both = self.userdb == "passwd-file-both"
        with open(os.path.join(self.tmp, "passwd"), "w") as f:
            for u in self.users.values():
                fields = list(u.passdb_fields.items())
                if both:
                    fields += [("userdb_" + k, v)
                               for k, v in self._userdb_fields(u).items()
                               if v is not None]
                fields = " ".join("%s=%s" % kv for kv in fields)
                if DOVECOT_24:
                    fields = fields.replace("%w", "%{password}")
                f.write("%s:{PLAIN}%s:%s:%s::%s::%s\n" % (
                    u.name, u.password, self.mail_uid if both else "",
                    self.mail_gid if both else "",
                    self.home(u.name) if both else "", fields))
        with open(os.path.join(self.tmp, "master-users"), "w") as f:
            for name, password in self.master_users.items():
                f.write("%s:{PLAIN}%s\n" % (name, password))
        if self.userdb.startswith("sqlite"):
            self._write_sqlite()
            return
        with open(os.path.join(self.tmp, "userdb"), "w") as f:
            for u in self.users.values():
                # passwd-file passes only userdb_-prefixed extra fields
                extra = " ".join("userdb_%s=%s" % kv
                                 for kv in self._userdb_fields(u).items()
                                 if kv[1] is not None)
                f.write("%s::%d:%d::%s::%s\n" % (
                    u.name, self.mail_uid, self.mail_gid,
                    self.home(u.name), extra))

    def update_user(self, name, **fields):
        """Changes a user's userdb fields (restart the server to be sure
        the auth process re-reads them)."""
        self.users[name].fields.update(fields)
        self._write_userdb()
        # passwd-file is re-read when its mtime changes; within the same
        # second it would not be
        path = os.path.join(self.tmp, "passwd" if self.userdb ==
                            "passwd-file-both" else "userdb")
        if os.path.exists(path):
            later = time.time() + 2
            os.utime(path, (later, later))

    def _write_sqlite(self):
        cols = sorted({k for u in self.users.values()
                       for k in self._userdb_fields(u)})
        db = os.path.join(self.tmp, "users.sqlite")
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE users (username TEXT PRIMARY KEY, "
                    "password TEXT, home TEXT, uid INTEGER, gid INTEGER%s)" %
                    "".join(", %s TEXT" % _sql_column(c) for c in cols))
        for u in self.users.values():
            con.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?%s)" %
                        (", ?" * len(cols)),
                        [u.name, "{PLAIN}" + u.password, self.home(u.name),
                         self.mail_uid, self.mail_gid] +
                        [self._userdb_fields(u).get(c) for c in cols])
        con.commit()
        con.close()
        os.chmod(db, 0o644)
        with open(os.path.join(self.tmp, "sql.conf.ext"), "w") as f:
            f.write("driver = sqlite\nconnect = %s\n" % db)
            # NULL columns are skipped by Dovecot: a user without a value
            # falls back to plugin {}
            f.write("user_query = SELECT home, uid, gid%s FROM users "
                    "WHERE username = '%%u'\n" %
                    "".join(", %s" % _sql_column(c) for c in cols))
            f.write("iterate_query = SELECT username AS user FROM users\n")
            f.write("password_query = SELECT username AS user, password "
                    "FROM users WHERE username = '%u'\n")

    # On 2.4 a user's popvault_dict is a filter the userdb sets by path:
    # the tests' redis URIs become those fields.
    def _userdb_fields(self, user):
        uri = user.fields.get("popvault_dict")
        if not DOVECOT_24 or uri is None or _user_dict_24(uri) is None:
            return user.fields
        fields = {k: v for k, v in user.fields.items()
                  if k != "popvault_dict"}
        fields.update(_user_dict_24(uri))
        return fields

    def _plugins(self):
        if self.mail_plugins is not None:
            return self.mail_plugins
        return "popvault" if self.with_popvault else ""

    def config(self):
        return self._config_24() if DOVECOT_24 else self._config_23()

    def _config_23(self):
        t = self.tmp
        plugins = self._plugins()
        location = {
            "maildir": "maildir:~/Maildir",
            "sdbox": "sdbox:~/sdbox",
            "mdbox": "mdbox:~/mdbox",
        }[self.mail_format]
        passdb = ("passdb {\n  driver = passwd-file\n"
                  "  args = scheme=PLAIN username_format=%%u %s/passwd\n}\n"
                  % t)
        if self.userdb.startswith("sqlite"):
            userdb = ("userdb {\n  driver = sql\n  args = %s/sql.conf.ext\n}\n"
                      % t)
        elif self.userdb == "passwd-file-both":
            userdb = ("userdb {\n  driver = passwd-file\n"
                      "  args = username_format=%%u %s/passwd\n}\n" % t)
        else:
            userdb = ("userdb {\n  driver = passwd-file\n"
                      "  args = username_format=%%u %s/userdb\n}\n" % t)
        if self.userdb == "sqlite-both":
            # SQL passdb and userdb; the users' passdb fields are handed
            # over as in docs/encryption.md: override_fields
            override = sorted({"%s=%s" % kv for u in self.users.values()
                               for kv in u.passdb_fields.items()})
            passdb = ("passdb {\n  driver = sql\n  args = %s/sql.conf.ext\n"
                      "%s}\n" % (t, "  override_fields = %s\n" %
                                  " ".join(override) if override else ""))
        if self.master_users:
            passdb = ("auth_master_user_separator = *\n"
                      "passdb {\n  driver = passwd-file\n  master = yes\n"
                      "  pass = yes\n  args = scheme=PLAIN %s/master-users\n"
                      "}\n" % t) + passdb
        plugin = "".join("  %s = %s\n" % kv for kv in self.plugin.items())
        login_env = " ".join("%s=%s" % kv for kv in self.login_env.items())
        login_plugins = ("protocol pop3 {\n  login_plugins = popvault_login\n}"
                         if self.login_env else "")
        return f"""# generated by popvault's test harness
{self._server_conf(self._tls_conf())}mail_location = {location}
mail_temp_dir = {self.mail_temp_dir}
mail_plugin_dir = {t}/modules
mail_plugins = $mail_plugins {plugins}
postmaster_address = postmaster@popvault.test
# lets doveadm(faketime=...) keep libfaketime across Dovecot's env clean-up
import_environment = TZ CORE_OUTOFMEM CORE_ERROR LD_PRELOAD FAKETIME FAKETIME_DONT_FAKE_MONOTONIC FAKETIME_NO_CACHE NO_FAKE_STAT ASAN_OPTIONS UBSAN_OPTIONS {login_env}
{SANITIZE_CONF}
login_plugin_dir = {t}/login-modules
{login_plugins}
{passdb}{userdb}
{self._common_conf()}plugin {{
{plugin}}}
{self.extra_conf}
"""

    def _server_conf(self, tls_conf):
        """What both versions write alike at the top: paths, log, users."""
        t = self.tmp
        return f"""protocols = pop3 imap lmtp
listen = 127.0.0.1
base_dir = {t}/run
state_dir = {t}/state
instance_name = popvault-{os.path.basename(t)}
log_path = {t}/dovecot.log
mail_debug = {"yes" if self.debug else "no"}
auth_verbose = yes
{tls_conf}auth_mechanisms = plain
default_internal_user = {self.internal_user}
default_internal_group = {grp.getgrgid(pwd.getpwnam(self.internal_user).pw_gid).gr_name}
default_login_user = {self.login_user}
first_valid_uid = 1
"""

    def _common_conf(self):
        """The part both versions write alike: namespace and services."""
        # 2.4 has no per-listener address (listen covers it)
        pop3s_address = "" if DOVECOT_24 else "    address = 127.0.0.1\n"
        return f"""lmtp_save_to_detail_mailbox = no
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Trash {{
    special_use = \\Trash
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {self.ports["pop3"]}
  }}
  inet_listener pop3s {{
{pop3s_address}    port = {self.ports.get("pop3s", 0)}
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.ports["imap"]}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    port = {self.ports["lmtp"]}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
{self._clock_conf()}"""

    def _clock_conf(self):
        """clock_services' processes start under libfaketime, reading
        the test clock's file at every time call (see advance_clock)."""
        # env -u: 2.4's import_environment may hand over an empty
        # FAKETIME, which would win over the file
        env = " ".join("%s=%s" % kv for kv in sorted(faketime_env(
            FAKETIME_TIMESTAMP_FILE=self.clock_path).items()))
        return "".join("service %s {\n  executable = /usr/bin/env -u FAKETIME "
                       "%s %s/%s\n}\n" % (svc, env, DOVECOT_LIBEXEC, svc)
                       for svc in self.clock_services)

    def _write_clock(self):
        # a rename: a process reading the clock never sees half a file
        tmp = self.clock_path + ".new"
        with open(tmp, "w") as f:
            f.write("+%d\n" % self.clock_offset)
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.clock_path)

    def advance_clock(self, seconds):
        """Moves the clock of clock_services' processes on by seconds,
        for running processes at their next time call. Only forwards:
        Dovecot warns about time moving backwards."""
        assert self.clock_services, "no service reads the test clock"
        assert seconds > 0, seconds
        self.clock_offset += seconds
        self._write_clock()

    def _is_child(self, pid, comm):
        try:
            with open("/proc/%s/stat" % pid) as f:
                name, rest = f.read().split(" (", 1)[1].rsplit(") ", 1)
        except (OSError, IndexError, ValueError):
            return False
        return name == comm and int(rest.split()[1]) == self.proc.pid

    def children(self, comm):
        """PIDs of the master's children named comm, alive now (/proc)."""
        return [int(pid) for pid in os.listdir("/proc")
                if pid.isdigit() and self._is_child(pid, comm)]

    def wait_sessions_end(self, comm="pop3", timeout=60):
        """A session's work goes on after the client is gone (\\Seen of a
        dropped connection, move recovery, the retention sweep); its
        process ends when it is done. Waits, without sampling, for the end
        of every comm process the master has now."""
        fds = []
        try:
            for pid in self.children(comm):
                with contextlib.suppress(ProcessLookupError):
                    fd = os.pidfd_open(pid)
                    fds.append(fd)
                    # the PID may have been reused since the scan: a
                    # pidfd is kept only for the process checked after
                    # it was opened
                    if not self._is_child(pid, comm):
                        fds.pop()
                        os.close(fd)
            wait_pidfds(fds, timeout)
        finally:
            for fd in fds:
                os.close(fd)

    def _config_24(self):
        t = self.tmp
        driver, path = {
            "maildir": ("maildir", "~/Maildir"),
            "sdbox": ("sdbox", "~/sdbox"),
            "mdbox": ("mdbox", "~/mdbox"),
        }[self.mail_format]
        plugins = "".join("  %s = yes\n" % p for p in self._plugins().split())
        env = ["TZ", "CORE_OUTOFMEM", "CORE_ERROR", "LD_PRELOAD", "FAKETIME",
               "FAKETIME_DONT_FAKE_MONOTONIC", "FAKETIME_NO_CACHE",
               "NO_FAKE_STAT", "ASAN_OPTIONS", "UBSAN_OPTIONS"]
        import_env = "".join("  %s = %%{env:%s}\n" % (e, e) for e in env)
        import_env += "".join("  %s = %s\n" % kv
                              for kv in self.login_env.items())
        login_plugins = ("protocol pop3 {\n  login_plugins {\n"
                         "    popvault_login = yes\n  }\n}"
                         if self.login_env else "")
        passdb = "passdb passwd-file {\n  passwd_file_path = %s/passwd\n}\n" % t
        if self.userdb.startswith("sqlite"):
            cols = sorted({k for u in self.users.values()
                           for k in self._userdb_fields(u)})
            userdb = ("sql_driver = sqlite\nsqlite_path = %s/users.sqlite\n"
                      "userdb sql {\n  query = SELECT home, uid, gid%s "
                      "FROM users WHERE username = '%%{user}'\n"
                      "  iterate_query = SELECT username AS user FROM users\n"
                      "}\n" % (t, "".join(", %s" % _sql_column(c) for c in cols)))
        elif self.userdb == "passwd-file-both":
            userdb = ("userdb passwd-file {\n  passwd_file_path = %s/passwd\n"
                      "}\n" % t)
        else:
            userdb = ("userdb passwd-file {\n  passwd_file_path = %s/userdb\n"
                      "}\n" % t)
        if self.userdb == "sqlite-both":
            # the users' passdb fields as passdb_fields (2.3:
            # override_fields)
            fields = sorted({kv for u in self.users.values()
                             for kv in u.passdb_fields.items()})
            passdb = ("passdb sql {\n  query = SELECT username AS user, "
                      "password FROM users WHERE username = '%%{user}'\n"
                      "%s}\n" % ("  passdb_fields {\n%s  }\n" % "".join(
                          "    %s = %s\n" % (k, v.replace("%w", "%{password}"))
                          for k, v in fields) if fields else ""))
        if self.master_users:
            # 2.3's pass = yes: the user must also pass the next passdb
            passdb = ("auth_master_user_separator = *\n"
                      "passdb master-users {\n  driver = passwd-file\n"
                      "  master = yes\n  result_success = continue\n"
                      "  passwd_file_path = %s/master-users\n}\n" % t) + passdb
        settings = "".join(_setting_24(*kv) for kv in self.plugin.items())
        return f"""# generated by popvault's test harness (Dovecot 2.4)
dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
{self._server_conf(self._tls_conf_24())}mail_driver = {driver}
mail_path = {path}
mail_temp_dir = {self.mail_temp_dir}
mail_plugin_dir = {t}/modules
mail_plugins {{
{plugins}}}
postmaster_address = postmaster@popvault.test
# lets doveadm(faketime=...) keep libfaketime across Dovecot's env clean-up
import_environment {{
{import_env}}}
{SANITIZE_CONF}
login_plugin_dir = {t}/login-modules
{login_plugins}
{passdb}{userdb}
{self._common_conf()}
{settings}
{self.extra_conf}
"""

    def _wait_ready(self, since):
        """The master binds every listener before it logs that it is
        starting up (services_listen() before main_init() in 2.3's and
        2.4's master/main.c): after that line every port answers."""
        try:
            self.wait_log(r"master: Info: Dovecot v\S+ .*starting up",
                          since=since)
        except HarnessError:
            out = self.proc.stdout.read().decode(errors="replace")
            raise HarnessError("dovecot exited with %s at start-up:\n%s\n%s"
                               % (self.proc.returncode, out,
                                  self.log_tail())) from None
        except AssertionError as e:
            self.stop()
            raise HarnessError("dovecot did not start: %s" % e) from None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc = None

    def cleanup(self):
        if self.tmp and not os.environ.get("POPVAULT_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)
            if getattr(self, "mail_temp_dir", None):
                shutil.rmtree(self.mail_temp_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if exc[0] is not None:
            print("---- dovecot log tail (%s) ----\n%s" % (self.tmp,
                                                          self.log_tail()))
        self.cleanup()
        return False

    # --- log -------------------------------------------------------------

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, n=40):
        try:
            return "\n".join(self.log().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def wait_log(self, pattern, timeout=60, since=0, count=1):
        """Waits until the log (from byte offset since) matches count
        times; returns the matches. Dovecot's log process writes what the
        others send it, so the line is the event; timeout is only a
        safety net against a line that never comes."""
        deadline = time.time() + timeout
        rx = re.compile(pattern)
        while True:
            text = self.log()[since:]
            found = list(rx.finditer(text))
            if len(found) >= count:
                return found[0] if count == 1 else found
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError("dovecot exited with %s while waiting "
                                   "for %r" % (self.proc.returncode, pattern))
            if time.time() > deadline:
                raise AssertionError("log never matched %r; tail:\n%s"
                                     % (pattern, self.log_tail()))
            time.sleep(0.05)

    def log_size(self):
        return os.path.getsize(self.log_path)

    def log_errors(self):
        return [l for l in self.log().splitlines()
                if re.search(r"\b(Error|Fatal|Panic)\b:", l)]

    def login_lines(self, login="pop3-login", user=None, since=0):
        """The log lines of successful logins through a login service
        ("Login:" on 2.3, "Logged in:" on 2.4), of one user if given."""
        what = "%s: Info: %s" % (login, by_version("Login:", "Logged in:"))
        if user is not None:
            what += " user=<%s>" % user
        return [l for l in self.log()[since:].splitlines() if what in l]

    # --- clients ---------------------------------------------------------

    def pop3(self, user=None):
        """A POP3 connection, logged in when user is given."""
        c = Pop3(self.ports["pop3"])
        if user is not None:
            r = c.login(user, self.users[user].password)
            assert r.startswith("+OK"), "POP3 login %s: %s" % (user, r)
        return c

    def imap(self, user=None, timeout=20):
        c = Imap(self.ports["imap"], timeout=timeout)
        if user is not None:
            r = c.login(user, self.users[user].password)
            assert " OK" in r, "IMAP login %s: %s" % (user, r)
        return c

    def imap_expunge(self, user, seqset, box="INBOX"):
        """Expunges the messages seqset of box over an IMAP session of its
        own (STORE \\Deleted, EXPUNGE), asserting each step."""
        c = self.imap(user)
        try:
            for cmd in ("SELECT " + box,
                        "STORE %s +FLAGS (\\Deleted)" % seqset, "EXPUNGE"):
                st = c.command(cmd)[0]
                assert " OK" in st, "%s: %s" % (cmd, st)
        finally:
            c.logout()

    def lmtp(self):
        return Lmtp(self.ports["lmtp"])

    def deliver(self, user, message):
        """Delivers over LMTP and asserts success."""
        c = self.lmtp()
        try:
            r = c.deliver(user, message)[user]
        finally:
            c.quit()
        assert r.startswith("250"), "LMTP delivery to %s: %s" % (user, r)
        return r

    def deliver_many(self, user, messages):
        c = self.lmtp()
        try:
            for m in messages:
                r = c.deliver(user, m)[user]
                assert r.startswith("250"), "LMTP to %s: %s" % (user, r)
        finally:
            c.quit()

    def doveadm(self, *args, check=True, input=None, faketime=None):
        """Runs doveadm against this server. faketime ("+15d") runs it
        with its clock shifted by libfaketime: the honest way to age
        recorded times without a backdoor in popvault itself."""
        env = sanitizer_env()
        if faketime is not None:
            env = dict(env or os.environ,
                       **faketime_env(FAKETIME=faketime))
        args = host_doveadm_args(args)
        p = subprocess.run([DOVEADM, "-c", self.config_path] + list(args),
                           input=input, capture_output=True, timeout=120,
                           env=env)
        out = p.stdout.decode(errors="replace")
        err = p.stderr.decode(errors="replace")
        if check and p.returncode != 0:
            raise AssertionError("doveadm %s failed (%d): %s%s"
                                 % (" ".join(args), p.returncode, out, err))
        return p.returncode, out, err

    def lda(self, user, message):
        p = subprocess.run([DOVECOT_LDA, "-c", self.config_path, "-d", user,
                            "-f", "sender@example.com"],
                           input=message, capture_output=True, timeout=60,
                           env=sanitizer_env())
        return p.returncode, p.stderr.decode(errors="replace")


@contextlib.contextmanager
def dovecot(users, **kwargs):
    with Dovecot(users, **kwargs) as dc:
        yield dc


@contextlib.contextmanager
def redis_server():
    """A private redis-server on 127.0.0.1, stopped by PID afterwards."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(exe, os.X_OK):
        raise HarnessError("redis-server missing (apt-get install redis-server)")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="popvault-redis-")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no",
                             "--dir", tmp, "--daemonize", "no"],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        # redis says when it listens; the timeout is only a safety net
        seen = b""
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + 60
        while b"Ready to accept connections" not in seen:
            ready, _, _ = select.select(
                [fd], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                raise HarnessError("redis-server did not start:\n%s"
                                   % seen.decode(errors="replace"))
            seen += chunk
        # the rest of its output goes nowhere, but must not fill the pipe
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

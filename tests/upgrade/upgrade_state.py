"""What both phases of the 2.3 -> 2.4 upgrade test share (issue 16): the
users of the mail root, the Dovecot that serves it, and the inventory of
everything a user or an admin can see of it.

phase1.py writes the mail root with Dovecot 2.3 and records the inventory;
phase2.py serves the same files with Dovecot 2.4 and compares. The mail
root keeps its absolute path across the two (as /var/vmail does across a
Debian upgrade): homes, the master key and the recorded state all live
below it.
"""

import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")


def import_harness(build_dir):
    """harness reads the build directory when it is imported."""
    os.environ["POPVAULT_BUILD_DIR"] = os.path.abspath(build_dir)
    sys.path.insert(0, INTEGRATION)
    import harness
    harness.BUILD_DIR = os.environ["POPVAULT_BUILD_DIR"]
    return harness


# Every key mode and cipher on the storages a provider uses, with the
# policies whose state lives in the mail store (hidden, downloaded,
# damaged, moved, retention clocks, the UIDL ledger). carol and frank
# have no ledger: their UIDLs come from pop3_uidl_format on both
# versions. hank and ivy store compressed mail (2.3's zlib, read by 2.4's
# mail_compress; hank's compressed, then encrypted).
USERS = {
    "alice": dict(store="maildir", key=None, fields={
        "popvault_after_retr": "hide", "popvault_retain_downloaded": "30d",
        "popvault_retain_unread": "60d", "popvault_uidl_ledger": "yes"}),
    "bob": dict(store="maildir", key="master", cipher="aes-256-gcm", fields={
        "popvault_on_dele": "move:Deleted",
        "popvault_retain_downloaded": "14d", "popvault_uidl_ledger": "yes"}),
    "carol": dict(store="sdbox", key=None, fields={
        "popvault_retain_unread": "90d"}),
    "dave": dict(store="sdbox", key="master", cipher="xchacha20-poly1305",
                 fields={"popvault_after_retr": "hide",
                         "popvault_uidl_ledger": "yes"}),
    "erin": dict(store="sdbox", key="password", cipher="aes-256-gcm",
                 fields={"popvault_retain_downloaded": "30d",
                         "popvault_uidl_ledger": "yes"}),
    "frank": dict(store="mdbox", key="password", cipher="xchacha20-poly1305",
                  fields={"popvault_after_retr": "hide",
                          "popvault_retain_unread": "45d"}),
    "gina": dict(store="mdbox", key=None, fields={
        "popvault_on_dele": "hide", "popvault_retain_downloaded": "7d",
        "popvault_uidl_ledger": "yes"}),
    "hank": dict(store="maildir", key="master", cipher="aes-256-gcm",
                 compress=True, fields={"popvault_retain_downloaded": "30d"}),
    "ivy": dict(store="mdbox", key=None, compress=True, fields={
        "popvault_after_retr": "hide", "popvault_uidl_ledger": "yes"}),
}
# LOGIN-DELAY state (popvault_dict, by default a file dict in the home):
# logged in on 2.3, refused on 2.4 within the delay. Not in USERS: every
# later login is refused, so there is nothing else to read.
DELAY_USER = "june"
DELAY_FIELDS = {"popvault_login_delay": "1d",
                "popvault_login_delay_mode": "refuse"}
PASSWORD_USERS = [u for u, d in USERS.items() if d["key"] == "password"]
ENCRYPTING_USERS = [u for u, d in USERS.items() if d["key"]]
# the user whose multi-chunk message is damaged on disk (a later chunk,
# found by a POP3 download, so it carries $PopvaultDamaged)
DAMAGED_USER = "bob"
DAMAGED_KEYWORD = "$PopvaultDamaged"
# retention clocks are read as "what would a sweep remove this far ahead"
SWEEP_AHEAD = "+400d"


def master_key_path(root):
    return os.path.join(root, "keys", "master.key")


def state_path(root):
    return os.path.join(root, "upgrade-23.json")


def password(user):
    return "Upgr4de-%s-pw" % user


def make_users(harness, root):
    """The harness users, with each one's store in the userdb in the
    syntax of the Dovecot under test (2.3 mail=, 2.4 mail_driver and
    mail_path)."""
    users = []
    delay = dict(store="maildir", key=None, fields=DELAY_FIELDS)
    for name, d in list(USERS.items()) + [(DELAY_USER, delay)]:
        fields = dict(d["fields"])
        path = "~/" + d["store"].capitalize()
        fields.update(harness.by_version(
            {"mail": "%s:%s" % (d["store"], path)},
            {"mail_driver": d["store"], "mail_path": path}))
        if d.get("compress"):
            fields.update(harness.by_version(
                {"zlib_save": "gz"}, {"mail_compress_write_method": "gz"}))
        passdb = {}
        if d["key"]:
            fields.update(popvault_encrypt="yes", popvault_cipher=d["cipher"])
        if d["key"] == "master":
            fields["popvault_master_key"] = master_key_path(root)
        if d["key"] == "password":
            # as docs/encryption.md shows it: the passdb hands the login
            # password over (the harness writes %{password} for 2.4)
            passdb = {"userdb_popvault_key_password": "%w"}
        users.append(harness.User(name, password(name), fields,
                                  passdb_fields=passdb))
    return users


def server(harness, root, extra_conf=""):
    """A Dovecot serving the mail root's homes (not started)."""
    # 2.4 renamed zlib to mail_compress; a provider loads it for every
    # user and sets the write method per user
    plugins = harness.by_version("zlib popvault", "mail_compress popvault")
    return harness.Dovecot(make_users(harness, root),
                           home_root=os.path.join(root, "home"),
                           mail_plugins=plugins, name="upgrade",
                           extra_conf=extra_conf)


def login_delay_refused(dc):
    """None when the delay user's POP3 login is refused for LOGIN-DELAY."""
    p = dc.pop3()
    try:
        r = p.login(DELAY_USER, password(DELAY_USER))
    finally:
        p.close()
    return None if r.startswith("-ERR [LOGIN-DELAY]") else \
        "login answered %r" % r


# --- inventory -----------------------------------------------------------

def sha(data):
    return hashlib.sha256(data).hexdigest()


def _fetch_items(line):
    """The metadata items of one untagged FETCH line, whatever their
    order."""
    out = {}
    for key, rx in (("uid", rb"\bUID (\d+)"),
                    ("flags", rb"\bFLAGS \(([^)]*)\)"),
                    ("internaldate", rb'\bINTERNALDATE "([^"]*)"'),
                    ("size", rb"\bRFC822\.SIZE (\d+)"),
                    ("guid", rb"\bX-GUID ([^\s)]+)")):
        m = re.search(rx, line)
        assert m, (key, line)
        out[key] = m.group(1).decode()
    out["uid"] = int(out["uid"])
    out["size"] = int(out["size"])
    # \Recent belongs to a session, not to the stored message
    out["flags"] = sorted(f for f in out["flags"].split() if f != "\\Recent")
    return out


def imap_inventory(dc, user, check_body):
    """{mailbox: {status, messages: [...]}}: every mailbox with its UIDs,
    flags and keywords, dates, sizes, GUIDs and full bytes, read without
    changing anything (EXAMINE, BODY.PEEK). A message marked damaged is
    not read: its read ends the connection, by design."""
    from crypt_util import literal
    from policy_util import list_mailboxes
    c = dc.imap(user)
    try:
        inv = {}
        for box in sorted(list_mailboxes(c)):
            st, out = c.command('STATUS "%s" (MESSAGES UIDNEXT UIDVALIDITY '
                                'UNSEEN)' % box)
            assert " OK" in st, st
            status = dict((k.decode(), int(v)) for k, v in re.findall(
                rb"(\w+) (\d+)", re.search(rb"\* STATUS .*\((.*)\)",
                                            out).group(1)))
            st, _ = c.command('EXAMINE "%s"' % box)
            assert " OK" in st, st
            msgs = []
            if status["MESSAGES"]:
                st, out = c.command("UID FETCH 1:* (UID FLAGS INTERNALDATE "
                                    "RFC822.SIZE X-GUID)")
                assert " OK" in st, st
                msgs = [_fetch_items(l) for l in out.split(b"\r\n")
                        if re.match(rb"\* \d+ FETCH ", l)]
            for m in msgs:
                if DAMAGED_KEYWORD in m["flags"]:
                    m["body"] = "not read: damaged"
                    continue
                st, out = c.command("UID FETCH %d (BODY.PEEK[])" % m["uid"])
                assert " OK" in st, (user, box, m["uid"], st)
                body = literal(out, b"BODY[]")
                check_body((user, "imap", box, m["uid"]), body)
                m["body"] = "%d %s" % (len(body), sha(body))
            inv[box] = {"status": status, "messages": msgs}
        return inv
    finally:
        c.logout()


def pop3_inventory(dc, user, check_body):
    """STAT, UIDL, LIST and every message's RETR bytes (or the refusal).
    RSET and a dropped connection leave no trace: no \\Seen, and popvault
    applies nothing without QUIT (docs/policies.md)."""
    p = dc.pop3(user)
    try:
        count, size = p.stat()
        inv = {"stat": [count, size], "uidl": [list(x) for x in p.uidl()],
               "list": [list(x) for x in p.list()], "retr": []}
        for n, _ in inv["list"]:
            r = p.command("RETR %d" % n)
            if not r.startswith("+OK"):
                inv["retr"].append(r)
                continue
            lines = p.read_multiline()
            body = ("\r\n".join(lines) + "\r\n").encode("latin-1")
            check_body((user, "pop3", n), body)
            inv["retr"].append("%d %s" % (len(body), sha(body)))
        r = p.command("RSET")
        assert r.startswith("+OK"), r
        return inv
    finally:
        p.close()


def doveadm_inventory(dc, user):
    """What an admin sees: status, the UIDLs the ledger exports, the key
    store, and each message's retention clock (what a sweep this far
    ahead would remove, and when it expired; -n changes nothing)."""
    _, out, _ = dc.doveadm("-f", "json", "popvault", "status", "-u", user)
    inv = {"status": json.loads(out)}
    _, out, _ = dc.doveadm("popvault", "uidl", "export", "-u", user)
    inv["uidl_export"] = sorted(out.splitlines())
    if user in ENCRYPTING_USERS:
        _, out, _ = dc.doveadm("-f", "tab", "popvault", "key", "list",
                               "-u", user)
        inv["key_list"] = sorted(out.splitlines())
    _, out, _ = dc.doveadm("-f", "tab", "popvault", "sweep", "-n", "-u", user,
                           faketime=SWEEP_AHEAD)
    inv["retention"] = sorted(out.splitlines())
    return inv


SECTIONS = ("imap", "pop3", "doveadm")


def inventory(dc, user, check_body=lambda where, body: None):
    """Everything below for one user; check_body(where, bytes) sees each
    message read."""
    return {"imap": imap_inventory(dc, user, check_body),
            "pop3": pop3_inventory(dc, user, check_body),
            "doveadm": doveadm_inventory(dc, user)}


def first_difference(old, new, where=""):
    """A readable description of the first difference, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if k not in new:
                return "%s/%s: gone" % (where, k)
            if k not in old:
                return "%s/%s: new" % (where, k)
            d = first_difference(old[k], new[k], "%s/%s" % (where, k))
            if d:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list):
        for i, (a, b) in enumerate(zip(old, new)):
            d = first_difference(a, b, "%s[%d]" % (where, i))
            if d:
                return d
        if len(old) != len(new):
            return "%s: %d entries, were %d" % (where, len(new), len(old))
        return None
    if old != new:
        return "%s: %r, was %r" % (where, new, old)
    return None

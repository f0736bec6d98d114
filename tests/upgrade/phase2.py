#!/usr/bin/env python3
"""Phase 2 of the upgrade test: Dovecot 2.4 serves the mail root phase 1
wrote with 2.3 and must show every user and the admin the same thing.

    phase2.py --build-dir build24 --mail-root DIR

One line per check (PASS/FAIL), then "N passed, N failed". Checks:
- per user, every inventory section equals 2.3's: IMAP (mailboxes,
  UIDVALIDITY/UIDNEXT, UIDs, flags and keywords, dates, sizes, GUIDs,
  bytes), POP3 (STAT, UIDL, LIST, RETR bytes or refusal; password mode:
  the login password unlocks the keys), doveadm (status, UIDL export, key
  list, retention clocks);
- two controls that the comparison sees a change: one flipped byte in a
  stored message, and another pop3_uidl_format;
- per user, a new delivery on 2.4 is listed after the old UIDLs, reads
  back byte-exact, and is not stored in plaintext for the users who
  encrypt (or compress);
- per password-mode user, 2.3's recovery key re-locks the keys with a new
  password (key password -R -N), which then opens all the mail;
- the LOGIN-DELAY that a 2.3 login started still refuses a login;
- the 2.4 log has no error but the damaged message's.
"""

import argparse
import json
import os
import sys
import traceback

import upgrade_state as us


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def run(self, name, fn, *args):
        """fn returns None when the check holds, else what differs."""
        try:
            problem = fn(*args)
        except Exception:
            problem = traceback.format_exc().strip().splitlines()[-1]
            traceback.print_exc()
        if problem is None:
            self.passed += 1
            print("PASS %s" % name)
        else:
            self.failed += 1
            print("FAIL %s: %s" % (name, problem))


compare = us.first_difference


def same_parts(dc, user, old_inv):
    """(part, 2.3's, 2.4's) for each part of the user's inventory: imap,
    pop3 and each doveadm command. A read that fails outright (an
    exception) is a difference of every part."""
    try:
        new_inv = us.inventory(dc, user)
    except Exception:
        traceback.print_exc()
        new_inv = {}
    for section in us.SECTIONS:
        old = old_inv[section]
        new = new_inv.get(section, {})
        if section == "doveadm":
            for part in sorted(old):
                yield part, old[part], new.get(part, "(not read)")
        else:
            yield section, old, new or "(not read)"


def imap_pop3(dc, user):
    return {"imap": us.imap_inventory(dc, user, lambda where, body: None),
            "pop3": us.pop3_inventory(dc, user, lambda where, body: None)}


def control_flipped_byte(dc, old_inv):
    """One byte of a stored message changes (alice's first message POP3
    still lists): the comparison must name that message and nothing else.
    The byte and the file's dates are put back afterwards."""
    from crypt_util import message_files
    user = "alice"
    inbox = old_inv[user]["imap"]["INBOX"]["messages"]
    msg = [m for m in inbox if "$POP3Hidden" not in m["flags"]][0]
    # maildir: the GUID is the file name up to the flags
    (path,) = [f for f in message_files(dc, user)
               if os.path.basename(f).split(":")[0] == msg["guid"]]
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        b = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([b[0] ^ 0x20]))
    try:
        new = imap_pop3(dc, user)
    finally:
        with open(path, "r+b") as f:
            f.seek(st.st_size // 2)
            f.write(b)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    imap_diff = compare(old_inv[user]["imap"], new["imap"])
    pop3_diff = compare(old_inv[user]["pop3"], new["pop3"])
    where = "/INBOX/messages[%d]/body" % inbox.index(msg)
    if imap_diff is None or not imap_diff.startswith(where):
        return "IMAP: %s" % imap_diff
    if pop3_diff is None or not pop3_diff.startswith("/retr[0]"):
        return "POP3: %s" % pop3_diff
    # put back, it reads as before
    return compare({k: old_inv[user][k] for k in ("imap", "pop3")},
                   imap_pop3(dc, user))


def control_uidl_format(harness, root, old_inv):
    """Another pop3_uidl_format on 2.4 changes the UIDLs of a user without
    the ledger: the comparison must see it."""
    user = "carol"
    conf = harness.by_version("pop3_uidl_format = %u\n",
                              "pop3_uidl_format = %{uid}\n")
    with us.server(harness, root, extra_conf=conf) as dc:
        new = us.pop3_inventory(dc, user, lambda where, body: None)
    if compare(old_inv[user]["pop3"]["uidl"], new["uidl"]) is None:
        return "not seen: %s" % new["uidl"]
    return None


def new_delivery(harness, dc, user, old_inv):
    """2.4 delivers new mail into the old store: listed after the old
    UIDLs (which stay), read back byte-exact, its text not in the files
    of a user who encrypts or compresses (and, showing that the search
    works, in a plaintext user's)."""
    from crypt_util import all_files
    token = "upgrade-token-%s-on-24" % user
    msg = harness.make_message("%s after the upgrade" % user,
                               body=token + "\r\n")
    dc.deliver(user, msg)
    p = dc.pop3(user)
    try:
        uidls = [list(x) for x in p.uidl()]
        old = old_inv[user]["pop3"]["uidl"]
        if uidls[:-1] != old or uidls[-1][1] in [u for _, u in old]:
            return "UIDLs %s, were %s" % (uidls, old)
        body = p.retr(len(uidls))
        if not body.endswith(msg):
            return "the new message reads differently"
        p.command("RSET")
    finally:
        p.close()
    on_disk = False
    for path in all_files(dc.home(user)):
        with open(path, "rb") as f:
            on_disk = on_disk or token.encode() in f.read()
    plain = not us.USERS[user]["key"] and not us.USERS[user].get("compress")
    if on_disk != plain:
        return "the token is%s in the files" % ("" if on_disk else " not")
    return None


def recovery_key(dc, user, recovery):
    """2.3's recovery key re-locks the keys with a new password; the new
    password then authenticates every message, the old one no longer
    opens the keys."""
    new_pw = us.password(user) + "-after-recovery"
    dc.doveadm("popvault", "key", "password", "-u", user, "-R", "-N",
               input=(recovery + "\n" + new_pw + "\n").encode())
    rc, out, err = dc.doveadm("popvault", "verify", "-u", user, "-P",
                              check=False, input=(new_pw + "\n").encode())
    if rc != 0:
        return "verify with the new password: %d %s%s" % (rc, out, err)
    rc, _, _ = dc.doveadm("popvault", "verify", "-u", user, "-P",
                          check=False,
                          input=(us.password(user) + "\n").encode())
    if rc == 0:
        return "the old password still opens the keys"
    return None


def log_errors(dc):
    """Errors other than the damaged message's (phase 1 damaged it)."""
    damaged = [l for l in dc.log_errors() if "damaged" in l and
               "(%s)" % us.DAMAGED_USER in l]
    other = [l for l in dc.log_errors() if l not in damaged]
    return "; ".join(other[:3]) if other else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--mail-root", required=True)
    args = ap.parse_args()
    harness = us.import_harness(args.build_dir)
    root = os.path.abspath(args.mail_root)
    with open(us.state_path(root)) as f:
        state = json.load(f)
    old_inv = state["inventory"]
    version = "%d.%d" % harness.DOVECOT_VERSION
    print("upgrade phase 2: Dovecot %s reads what Dovecot %s wrote in %s"
          % (version, state["dovecot"], root))
    checks = Checks()
    dc = us.server(harness, root)
    with dc:
        for user in us.USERS:
            for part, old, new in same_parts(dc, user, old_inv[user]):
                checks.run("%s %s" % (user, part), compare, old, new)
        checks.run("control: a flipped byte is seen", control_flipped_byte,
                   dc, old_inv)
    checks.run("control: another pop3_uidl_format is seen",
               control_uidl_format, harness, root, old_inv)
    # a fresh start (new run directory and ports) on the same homes
    with dc:
        for user in us.USERS:
            checks.run("%s new delivery" % user, new_delivery, harness, dc,
                       user, old_inv)
        for user in us.PASSWORD_USERS:
            checks.run("%s recovery key" % user, recovery_key, dc, user,
                       state["recovery"][user])
        checks.run("%s LOGIN-DELAY from 2.3 still holds" % us.DELAY_USER,
                   us.login_delay_refused, dc)
        checks.run("no unexpected error in the log", log_errors, dc)
    print("%d passed, %d failed" % (checks.passed, checks.failed))
    return 1 if checks.failed or not checks.passed else 0


if __name__ == "__main__":
    sys.exit(main())

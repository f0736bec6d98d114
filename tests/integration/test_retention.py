"""Retention windows counted from the first download (popvault_retain_*),
swept after the POP3 session and by "doveadm popvault sweep".

Time: received dates are set honestly with IMAP APPEND's INTERNALDATE; the
recorded first-download times are aged by running doveadm under
libfaketime (+N days). popvault itself has no way to backdate anything."""

import glob
import os
import pty
import re
import subprocess

import harness
from harness import User, dovecot
from policy_util import (deliver_numbered, imap_inventory, pop3_listing,
                         pop3_session, subjects)


def _sweep(dc, user_args, days, dry_run=False):
    args = ["-f", "flow", "popvault", "sweep"] + (["-n"] if dry_run else [])
    _, out, _ = dc.doveadm(*(args + user_args),
                           faketime="+%dd" % days if days else None)
    return out


def _inbox(dc, user):
    return subjects(imap_inventory(dc, user), "INBOX")


def test_retain_downloaded_counts_from_first_download():
    users = [User("r", fields={"popvault_retain_downloaded": "14d"})]
    with dovecot(users) as dc:
        deliver_numbered(dc, "r", 3)
        # downloaded and kept on the server (no DELE)
        assert pop3_session(dc, "r", retr=[1]).startswith("+OK")
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "status", "-u", "r")
        assert "downloaded=1 never_downloaded=2" in out, out
        assert _sweep(dc, ["-u", "r"], 0).strip() == ""
        assert _sweep(dc, ["-u", "r"], 13).strip() == ""
        assert _inbox(dc, "r") == ["m1", "m2", "m3"]
        # -n lists what would go and removes nothing
        out = _sweep(dc, ["-u", "r"], 15, dry_run=True)
        # the user once, in doveadm's Username column (no user=)
        assert re.search(r"^r mailbox=INBOX uid=1 .*reason=retain_downloaded"
                         r".*result=would remove", out, re.M), out
        assert len(out.strip().splitlines()) == 1, out
        assert _inbox(dc, "r") == ["m1", "m2", "m3"]
        _, out, err = dc.doveadm("-f", "flow", "popvault", "sweep", "-u", "r",
                                 faketime="+15d")
        assert "result=removed" in out, out
        assert _inbox(dc, "r") == ["m2", "m3"]
        # doveadm logs to stderr: the named event's line is there
        assert re.search(r"doveadm\(r\).*popvault: policy: mailbox=INBOX "
                         r"uid=1 .*action=expunge reason=retain_downloaded",
                         err), err


def test_retain_unread_and_all_users():
    users = [User("u1", fields={"popvault_retain_unread": "30d"}),
             User("u2", fields={"popvault_retain_unread": "30d",
                                "popvault_expire_action": "move:Expired"}),
             User("keepall")]
    with dovecot(users) as dc:
        for u in ("u1", "u2", "keepall"):
            deliver_numbered(dc, u, 2)
        pop3_session(dc, "u1", retr=[2])
        assert _sweep(dc, ["-A"], 29).strip() == ""
        out = _sweep(dc, ["-A"], 31)
        assert re.search(r"^u1 mailbox=INBOX uid=1 .*reason=retain_unread",
                         out, re.M), out
        assert re.search(r"^u2 mailbox=INBOX .*reason=retain_unread", out,
                         re.M), out
        assert "keepall" not in out
        # the downloaded message is not subject to the unread window
        assert _inbox(dc, "u1") == ["m2"]
        inv = imap_inventory(dc, "u2")
        assert subjects(inv, "INBOX") == [] and \
            subjects(inv, "Expired") == ["m1", "m2"], inv
        assert _inbox(dc, "keepall") == ["m1", "m2"]


def test_sweep_after_session_runs_once_client_is_gone():
    users = [User("z", fields={"popvault_retain_downloaded": "0"})]
    with dovecot(users) as dc:
        deliver_numbered(dc, "z", 2)
        assert pop3_session(dc, "z", retr=[1]).startswith("+OK")
        m = dc.wait_log(r"pop3\(z\).*popvault: policy: .*uid=1 .*"
                        r"reason=retain_downloaded")
        log = dc.log()
        # the client had its reply and was disconnected before the sweep
        assert log.index("pop3(z)") < log.index("Disconnected: Logged out")
        assert log.index("Disconnected: Logged out") < m.start()
        assert pop3_listing(dc, "z") == ["m2"]


def test_top_counts_only_when_configured():
    users = [User("t0", fields={"popvault_retain_downloaded": "14d"}),
             User("t1", fields={"popvault_retain_downloaded": "14d",
                                "popvault_retain_count_top": "yes"})]
    with dovecot(users) as dc:
        for u in ("t0", "t1"):
            deliver_numbered(dc, u, 2)
            pop3_session(dc, u, top=[1])
        _sweep(dc, ["-A"], 15)
        assert _inbox(dc, "t0") == ["m1", "m2"]
        assert _inbox(dc, "t1") == ["m2"]


def test_lost_index_never_deletes_early():
    users = [User("x", fields={"popvault_retain_downloaded": "14d",
                               "popvault_retain_unread": "20d"})]
    with dovecot(users) as dc:
        deliver_numbered(dc, "x", 2)
        pop3_session(dc, "x", retr=[1])
        _sweep(dc, ["-u", "x"], 10)
        assert _inbox(dc, "x") == ["m1", "m2"]
        # the index is lost (rebuilt from the maildir)
        dc.stop()
        for f in glob.glob(os.path.join(dc.home("x"), "Maildir",
                                        "dovecot.index*")):
            os.unlink(f)
        dc.start_again()
        # without the loss m1 would go at day 15 and m2 at day 21; after it
        # both are counted from the day the loss was found (day 16)
        out = _sweep(dc, ["-u", "x"], 16)
        assert out.strip() == "", out
        assert _inbox(dc, "x") == ["m1", "m2"]
        # m1 still known as downloaded ($POP3Downloaded): 14d from day 16
        out = _sweep(dc, ["-u", "x"], 31, dry_run=True)
        assert "uid=1" in out and "uid=2" not in out, out
        out = _sweep(dc, ["-u", "x"], 37)
        assert _inbox(dc, "x") == []


def test_session_sweep_skips_until_something_is_due():
    users = [User("h", fields={"popvault_retain_unread": "2d"})]
    # pop3 reads its time from the test clock (its sweep too)
    with dovecot(users, clock_services=("pop3",)) as dc:
        deliver_numbered(dc, "h", 1)
        pop3_session(dc, "h", top=[1])
        dc.wait_log(r"pop3\(h\).*retention sweep: 1 messages, 0 expired")
        # the full sweep left a hint: the next session does not scan
        mark = dc.log_size()
        pop3_session(dc, "h")
        dc.wait_log(r"pop3\(h\).*retention sweep: nothing due yet",
                    since=mark)
        # a day later nothing is due either: the hint still holds
        dc.advance_clock(86400)
        mark = dc.log_size()
        pop3_session(dc, "h")
        dc.wait_log(r"pop3\(h\).*retention sweep: nothing due yet",
                    since=mark)
        assert pop3_listing(dc, "h") == ["m1"]
        # past the two days: the session after which it is due scans
        dc.advance_clock(86400 + 1)
        mark = dc.log_size()
        pop3_session(dc, "h")
        dc.wait_log(r"pop3\(h\).*policy: .*reason=retain_unread",
                    since=mark)
        assert pop3_listing(dc, "h") == []


def test_sweep_all_users_progress_only_on_a_terminal():
    users = [User("u%d" % i, fields={"popvault_retain_unread": "30d"})
             for i in range(3)]
    with dovecot(users) as dc:
        # piped (cron, scripts): no progress line
        rc, out, err = dc.doveadm("popvault", "sweep", "-A")
        assert "popvault sweep" not in err, err
        # on a terminal: done/total and rate on stderr
        master, slave = pty.openpty()
        p = subprocess.Popen([harness.DOVEADM, "-c", dc.config_path,
                              "popvault", "sweep", "-A"],
                             stdin=slave, stdout=slave, stderr=slave,
                             env=harness.sanitizer_env())
        os.close(slave)
        p.wait(timeout=60)
        text = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            text += chunk
        os.close(master)
        assert p.returncode == 0, text
        assert re.search(rb"popvault sweep: all users: 3 \(\d+/s\)", text), \
            text

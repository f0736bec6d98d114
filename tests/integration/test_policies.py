"""Per-user download-and-delete policies (popvault_after_retr,
popvault_on_dele, popvault_list_since, popvault_list_window)."""

import re

from harness import User, by_version, dovecot, make_message
from policy_util import (append_dated, deliver_numbered, imap_inventory,
                         pop3_listing, pop3_session, subjects)

HIDDEN = "$POP3Hidden"

# One session for every user: m1 RETR only, m2 RETR+DELE, m3 DELE only,
# m4 untouched. Expected outcome per policy:
#   (INBOX subjects, hidden subjects, {other mailbox: subjects}, POP3 list)
MATRIX = {
    "default": ({}, (["m1", "m4"], [], {}, ["m1", "m4"])),
    "retrkeep": ({"popvault_after_retr": "keep"},
                 (["m1", "m4"], [], {}, ["m1", "m4"])),
    "retrdelete": ({"popvault_after_retr": "delete"},
                   (["m4"], [], {}, ["m4"])),
    "retrhide": ({"popvault_after_retr": "hide"},
                 (["m1", "m4"], ["m1"], {}, ["m4"])),
    "retrmove": ({"popvault_after_retr": "move:Archive"},
                 (["m4"], [], {"Archive": ["m1"]}, ["m4"])),
    "deleexpunge": ({"popvault_on_dele": "expunge"},
                    (["m1", "m4"], [], {}, ["m1", "m4"])),
    "delehide": ({"popvault_on_dele": "hide"},
                 (["m1", "m2", "m3", "m4"], ["m2", "m3"], {}, ["m1", "m4"])),
    "delekeep": ({"popvault_on_dele": "keep"},
                 (["m1", "m2", "m3", "m4"], [], {},
                  ["m1", "m2", "m3", "m4"])),
    "delemove": ({"popvault_on_dele": "move:Trash"},
                 (["m1", "m4"], [], {"Trash": ["m2", "m3"]}, ["m1", "m4"])),
    # DELE wins over after_retr for m2
    "both": ({"popvault_after_retr": "move:Archive",
              "popvault_on_dele": "hide"},
             (["m2", "m3", "m4"], ["m2", "m3"], {"Archive": ["m1"]}, ["m4"])),
    "bothdelete": ({"popvault_after_retr": "delete",
                    "popvault_on_dele": "keep"},
                   (["m2", "m3", "m4"], [], {}, ["m2", "m3", "m4"])),
}


def _check_outcome(dc, user, expected, deleted_flag=None):
    inbox, hidden, others, listed = expected
    inv = imap_inventory(dc, user)
    got_inbox = subjects(inv, "INBOX")
    if deleted_flag:
        # pop3_deleted_flag: Dovecot flags instead of expunging on DELE
        flagged = sorted(s for s, f in inv["INBOX"].items()
                         if deleted_flag in f)
        got_inbox = sorted(set(got_inbox) - set(flagged))
    assert got_inbox == inbox, (user, inv)
    got_hidden = sorted(s for s, f in inv["INBOX"].items() if HIDDEN in f)
    assert got_hidden == hidden, (user, inv)
    for box in set(inv) - {"INBOX"}:
        assert subjects(inv, box) == others.get(box, []), (user, box, inv)
    for box, subs in others.items():
        assert subjects(inv, box) == subs, (user, box, inv)
    assert pop3_listing(dc, user) == listed, user


def _run_matrix(deleted_flag=None, mail_format="maildir", names=None):
    names = names or list(MATRIX)
    users = [User(n, fields=MATRIX[n][0]) for n in names]
    extra = ("pop3_deleted_flag = %s\n" % deleted_flag.replace("$", "$$")
             if deleted_flag else "")
    with dovecot(users, mail_format=mail_format, extra_conf=extra) as dc:
        for n in names:
            deliver_numbered(dc, n, 4)
            r = pop3_session(dc, n, retr=[1, 2], dele=[2, 3])
            assert r.startswith("+OK"), (n, r)
        for n in names:
            # with pop3_deleted_flag, _check_outcome leaves out the mail
            # Dovecot flagged instead of expunging
            _check_outcome(dc, n, MATRIX[n][1], deleted_flag)
        # restarts do not bring hidden mail back: state is on disk
        assert dc.log_errors() == [], dc.log_errors()
        return dc.log()


def test_policy_matrix_maildir():
    log = _run_matrix()
    # each action is logged with user, uid, action and reason
    for user, action, reason in (("retrdelete", "delete", "after_retr"),
                                 ("retrhide", "hide", "after_retr"),
                                 ("retrmove", "move:Archive", "after_retr"),
                                 ("delehide", "hide", "on_dele"),
                                 ("delekeep", "keep", "on_dele"),
                                 ("delemove", "move:Trash", "on_dele")):
        assert re.search(r"pop3\(%s\).*popvault: policy: mailbox=INBOX "
                         r"uid=\d+ guid=\S+ action=%s reason=%s"
                         % (user, re.escape(action), reason), log), user
    # no action logged for users whose policy is Dovecot's own
    assert not re.search(r"pop3\((default|retrkeep|deleexpunge)\).*policy:",
                         log)


def test_policy_matrix_with_pop3_deleted_flag():
    _run_matrix(deleted_flag="POP3Deleted")


def test_policy_matrix_sdbox():
    _run_matrix(mail_format="sdbox",
                names=["retrdelete", "retrhide", "retrmove", "delehide",
                       "delekeep", "delemove", "both"])


def test_policy_matrix_mdbox():
    _run_matrix(mail_format="mdbox",
                names=["retrdelete", "retrhide", "retrmove", "delehide",
                       "delekeep", "delemove", "both"])


def test_no_quit_changes_nothing():
    names = [n for n in MATRIX if n != "default"]
    users = [User(n, fields=MATRIX[n][0]) for n in names]
    with dovecot(users) as dc:
        for n in names:
            deliver_numbered(dc, n, 4)
            assert pop3_session(dc, n, retr=[1, 2], dele=[2, 3],
                                quit=False) is None
        # a dropped session stores \Seen on its way out: look once every
        # pop3 process has ended
        dc.wait_sessions_end("pop3")
        for n in names:
            inv = imap_inventory(dc, n)
            assert subjects(inv, "INBOX") == ["m1", "m2", "m3", "m4"], (n, inv)
            assert all(HIDDEN not in f for f in inv["INBOX"].values()), inv
            assert all(not subjects(inv, b) for b in inv if b != "INBOX"), inv
            # Dovecot's own behaviour remains: RETRed mail is \Seen
            assert "\\Seen" in inv["INBOX"]["m1"], inv
            assert pop3_listing(dc, n) == ["m1", "m2", "m3", "m4"], n
        assert "policy:" not in dc.log()


def test_hidden_state_survives_restart_and_can_be_cleared():
    users = [User("h", fields={"popvault_after_retr": "hide"})]
    with dovecot(users) as dc:
        deliver_numbered(dc, "h", 3)
        pop3_session(dc, "h", retr=[2])
        assert pop3_listing(dc, "h") == ["m1", "m3"]
        dc.stop()
        dc.start_again()
        assert pop3_listing(dc, "h") == ["m1", "m3"]
        # the admin clears the keyword: the message is listed again
        dc.doveadm("flags", "remove", "-u", "h", HIDDEN, "mailbox", "INBOX",
                   "ALL")
        assert pop3_listing(dc, "h") == ["m1", "m2", "m3"]


def test_move_failure_keeps_mail_and_fails_quit():
    # quota full on the target: the copy cannot be made
    users = [User("q", fields={"popvault_after_retr": "move:Archive"})]
    quota_23 = {"quota": "count:User quota", "quota_rule": "*:messages=3",
                "quota_vsizes": "yes"}
    quota_24 = ('quota "User quota" {\n  driver = count\n'
                '  quota_message_count = 3\n}\n')
    with dovecot(users, mail_plugins="quota popvault",
                 plugin=by_version(quota_23, {}),
                 extra_conf=by_version("", quota_24)) as dc:
        deliver_numbered(dc, "q", 3)
        p = dc.pop3("q")
        p.retr(1)
        p.command("DELE 3")
        r = p.quit()
        assert r.startswith("-ERR [SYS/TEMP]"), r
        inv = imap_inventory(dc, "q")
        assert subjects(inv, "INBOX") == ["m1", "m2", "m3"], inv
        assert subjects(inv, "Archive") == [], inv
        line = dc.wait_log(r"pop3\(q\).*Error: popvault: .*Archive.*").group(0)
        assert "nothing removed" in line or "Can't move" in line, line
        # the next session still sees everything
        assert pop3_listing(dc, "q") == ["m1", "m2", "m3"]


def test_two_users_different_policies_same_server():
    users = [User("a", fields={"popvault_after_retr": "delete"}),
             User("b", fields={"popvault_after_retr": "hide"})]
    with dovecot(users, userdb="sqlite") as dc:
        for u in ("a", "b"):
            deliver_numbered(dc, u, 2)
            pop3_session(dc, u, retr=[1])
        assert subjects(imap_inventory(dc, "a"), "INBOX") == ["m2"]
        assert subjects(imap_inventory(dc, "b"), "INBOX") == ["m1", "m2"]
        assert pop3_listing(dc, "a") == ["m2"]
        assert pop3_listing(dc, "b") == ["m2"]




def test_list_window_and_since():
    users = [User("win", fields={"popvault_list_window": "7d"}),
             User("since", fields={"popvault_list_since": "2025-06-01"}),
             User("sinceunix", fields={"popvault_list_since": "1748736000"}),
             User("all", fields={"popvault_list_window": "0"})]
    with dovecot(users) as dc:
        for u in ("win", "since", "sinceunix", "all"):
            append_dated(dc, u, "old2024", "01-Jan-2024 00:00:00 +0000")
            append_dated(dc, u, "mid2025", "01-Jul-2025 12:00:00 +0000")
            dc.deliver(u, make_message("fresh"))
        assert pop3_listing(dc, "win") == ["fresh"]
        assert pop3_listing(dc, "since") == ["mid2025", "fresh"]
        assert pop3_listing(dc, "sinceunix") == ["mid2025", "fresh"]
        assert pop3_listing(dc, "all") == ["old2024", "mid2025", "fresh"]
        # out-of-window mail is not numbered and not reachable
        p = dc.pop3("win")
        assert p.stat()[0] == 1
        assert p.command("RETR 2").startswith("-ERR")
        p.quit()
        # and it is untouched for IMAP
        assert subjects(imap_inventory(dc, "win"), "INBOX") == \
            ["fresh", "mid2025", "old2024"]


def test_window_with_policy_and_deleted_flag_numbering():
    """Out-of-window and hidden mail never gets numbers, also with
    pop3_deleted_flag, and DELE/RETR by number hit the right message."""
    users = [User("w", fields={"popvault_list_window": "7d",
                               "popvault_after_retr": "hide"})]
    with dovecot(users, extra_conf="pop3_deleted_flag = POP3Deleted\n") as dc:
        dc.deliver("w", make_message("new1"))
        append_dated(dc, "w", "old1", "01-Jan-2024 00:00:00 +0000")
        dc.deliver("w", make_message("new2"))
        append_dated(dc, "w", "old2", "02-Jan-2024 00:00:00 +0000")
        dc.deliver("w", make_message("new3"))
        assert pop3_listing(dc, "w") == ["new1", "new2", "new3"]
        p = dc.pop3("w")
        assert b"Subject: new2" in p.retr(2)
        assert p.command("DELE 3").startswith("+OK")
        p.quit()
        inv = imap_inventory(dc, "w")
        assert HIDDEN in inv["INBOX"]["new2"], inv
        assert "POP3Deleted" in inv["INBOX"]["new3"], inv
        assert pop3_listing(dc, "w") == ["new1"]


def test_whole_top_is_a_download():
    # fetchmail downloads with "TOP n 99999999" and never sends RETR: a
    # TOP that sent the whole message counts like RETR (after_retr,
    # retention clock, \Seen); a partial TOP does not
    users = [User("topdel", fields={"popvault_after_retr": "delete"}),
             User("topmove", fields={"popvault_after_retr": "move:Archive"}),
             User("topseen", fields={"popvault_retain_downloaded": "14d"}),
             User("tophide", fields={"popvault_after_retr": "hide"})]
    with dovecot(users) as dc:
        for u in users:
            deliver_numbered(dc, u.name, 4)
        # every body is one line: "TOP n 1" sends all of it, "TOP n 0"
        # only the header
        for u in ("topdel", "topmove"):
            p = dc.pop3(u)
            for n, lines in ((1, 99999999), (2, 0), (3, 1)):
                r, _ = p.multi("TOP %d %d" % (n, lines))
                assert r.startswith("+OK"), r
            assert p.quit().startswith("+OK")
        inv = imap_inventory(dc, "topdel")
        assert subjects(inv, "INBOX") == ["m2", "m4"], inv
        inv = imap_inventory(dc, "topmove")
        assert subjects(inv, "INBOX") == ["m2", "m4"], inv
        assert subjects(inv, "Archive") == ["m1", "m3"], inv

        # \Seen as pop3 gives it for RETR: also without QUIT
        p = dc.pop3("topseen")
        for n, lines in ((1, 99999999), (2, 0)):
            r, _ = p.multi("TOP %d %d" % (n, lines))
            assert r.startswith("+OK"), r
        p.close()
        dc.wait_log(r"pop3\(topseen\).*Disconnected")
        inv = imap_inventory(dc, "topseen")
        assert "\\Seen" in inv["INBOX"]["m1"], inv
        assert "\\Seen" not in inv["INBOX"]["m2"], inv
        # the retention clock starts with a QUIT session, as for RETR
        pop3_session(dc, "topseen", top=[])
        p = dc.pop3("topseen")
        r, _ = p.multi("TOP 3 5")
        assert r.startswith("+OK"), r
        assert p.quit().startswith("+OK")
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "status",
                               "-u", "topseen")
        assert "downloaded=1 never_downloaded=3" in out, out
        assert "\\Seen" in imap_inventory(dc, "topseen")["INBOX"]["m3"]


        # numbering with a message left out of the listing: \Seen goes to
        # the message the TOP sent (pop3 maps numbers to sequences)
        p = dc.pop3("tophide")
        p.retr(1)
        assert p.quit().startswith("+OK")
        p = dc.pop3("tophide")
        r, lines = p.multi("TOP 2 99999999")
        assert r.startswith("+OK") and "Subject: m3" in lines, lines
        assert p.quit().startswith("+OK")
        inv = imap_inventory(dc, "tophide")["INBOX"]
        assert HIDDEN in inv["m1"] and HIDDEN in inv["m3"], inv
        assert "\\Seen" in inv["m3"], inv
        assert "\\Seen" not in inv["m2"] and HIDDEN not in inv["m2"], inv

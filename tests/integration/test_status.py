"""doveadm popvault status: one user column in every form, and no made-up
download counts for users whose downloads are not recorded."""

import json

from harness import User, dovecot, make_message


def _status(dc, fmt, *who):
    _, out, _ = dc.doveadm("-f", fmt, "popvault", "status", *who)
    return out


def test_status_names_the_user_once():
    """-u and -A, as table, flow and json: the user name appears in one
    column only (doveadm adds its own for -A; issue 15 item 14)."""
    users = [User("ann", fields={"popvault_after_retr": "hide"}),
             User("ben", fields={"popvault_on_dele": "keep"})]
    with dovecot(users) as dc:
        for who in (["-u", "ann"], ["-A"], ["-u", "a*"]):
            rows = json.loads(_status(dc, "json", *who))
            names = sorted(r["username"] for r in rows)
            assert names == (["ann", "ben"] if who == ["-A"] else ["ann"]), \
                (who, rows)
            for r in rows:
                # no second column holds the name
                assert [k for k, v in r.items() if v == r["username"]] == \
                    ["username"], (who, r)
                assert r["state"] == "active", r

            for line in _status(dc, "flow", *who).splitlines():
                fields = line.split()
                user = fields[0]
                assert user in ("ann", "ben"), line
                assert fields[1] == "state=active", line
                assert not any(f.endswith("=" + user) for f in fields), line

            table = _status(dc, "table", *who).splitlines()
            header = table[0].split()
            assert header[:2] == ["Username", "state"], table
            assert "user" not in header, table
            for line in table[1:]:
                cells = line.split()
                assert cells.count(cells[0]) == 1, line


def test_status_says_downloads_are_untracked_without_a_window():
    """Without a retention window downloads are not recorded, so status
    says so instead of downloaded=0 (issue 19 item 5); with a window it
    counts them."""
    users = [User("plain", fields={"popvault_after_retr": "keep"}),
             User("win", fields={"popvault_retain_downloaded": "14d"})]
    with dovecot(users) as dc:
        for user in ("plain", "win"):
            for n in (1, 2):
                dc.deliver(user, make_message("m%d" % n))
            p = dc.pop3(user)
            assert p.retr(1) and p.retr(2)
            assert p.quit().startswith("+OK")

        out = _status(dc, "flow", "-u", "plain")
        assert "downloaded=untracked never_downloaded=untracked " \
            "next_expiry=never" in out, out
        out = _status(dc, "flow", "-u", "win")
        assert "downloaded=2 never_downloaded=0 " in out, out
        rows = {r["username"]: r for r in json.loads(_status(dc, "json", "-A"))}
        assert rows["plain"]["downloaded"] == "untracked", rows
        assert rows["win"]["downloaded"] == "2", rows

"""The UIDL ledger keeps the UIDLs clients saw across index loss, new
UIDVALIDITYs and format migration; doveadm export/import carry them."""

import glob
import os

from harness import User, dovecot, make_message


def _uidls_by_subject(dc, user):
    p = dc.pop3(user)
    out = {}
    for n, uidl in p.uidl():
        r, lines = p.multi("TOP %s 0" % n)
        subj = [l[9:] for l in lines if l.startswith("Subject: ")][0]
        out[subj] = uidl
    p.quit()
    return out


def _remove_index_and_uidlist(maildir):
    """Index and uidlist go; dovecot-uidvalidity* stays. Dovecot hands out
    the next UIDVALIDITY from that file as the last one plus one, so the new
    UIDVALIDITY differs for certain; without it the value is the current
    second, the same as before when the test runs within one second."""
    for f in glob.glob(os.path.join(maildir, "dovecot*")):
        if not os.path.basename(f).startswith("dovecot-uidvalidity"):
            os.unlink(f)


def _lose_index_and_uidlist(dc, user):
    dc.stop()
    _remove_index_and_uidlist(os.path.join(dc.home(user), "Maildir"))
    dc.start_again()


def test_uidls_survive_uidvalidity_change():
    users = [User("l", fields={"popvault_uidl_ledger": "yes"}),
             User("n", fields={"popvault_after_retr": "keep"})]
    with dovecot(users) as dc:
        for u in ("l", "n"):
            dc.deliver_many(u, [make_message("s%d" % i) for i in range(3)])
        before = {u: _uidls_by_subject(dc, u) for u in ("l", "n")}
        assert os.path.exists(os.path.join(dc.home("l"),
                                           "popvault-uidl.ledger"))
        _lose_index_and_uidlist(dc, "l")
        dc.stop()
        _remove_index_and_uidlist(os.path.join(dc.home("n"), "Maildir"))
        dc.start_again()
        after = {u: _uidls_by_subject(dc, u) for u in ("l", "n")}
        assert after["l"] == before["l"], (before, after)
        # without the ledger Dovecot's UIDLs change with the UIDVALIDITY:
        # proof that this test can see a change
        assert after["n"] != before["n"], (before, after)


def test_uidls_survive_migration_to_mdbox():
    users = [User("m", fields={"popvault_uidl_ledger": "yes"})]
    with dovecot(users) as dc:
        dc.deliver_many("m", [make_message("s%d" % i) for i in range(3)])
        before = _uidls_by_subject(dc, "m")
        dc.doveadm("backup", "-u", "m", "mdbox:~/mdbox")
        dc.update_user("m", mail="mdbox:~/mdbox")
        dc.stop()
        dc.start_again()
        _, out, _ = dc.doveadm("user", "-f", "mail", "m")
        assert out.strip() == "mdbox:~/mdbox", out
        after = _uidls_by_subject(dc, "m")
        assert after == before, (before, after)


def test_export_import_round_trip():
    users = [User("e", fields={"popvault_uidl_ledger": "yes"})]
    with dovecot(users) as dc:
        dc.deliver_many("e", [make_message("s%d" % i, msgid="<s%d@old>" % i)
                              for i in range(3)])
        _, out, _ = dc.doveadm("popvault", "uidl", "export", "-u", "e")
        exported = [l.split() for l in out.strip().splitlines()]
        assert len(exported) == 3 and all(len(l) == 2 for l in exported), out
        assert sorted(u for u, _ in exported) == \
            sorted(_uidls_by_subject(dc, "e").values())
        # an old server's UIDLs, by Message-ID and by GUID
        path = os.path.join(dc.tmp, "import.txt")
        with open(path, "w") as f:
            f.write("# from the old server\n")
            f.write("OLD-UIDL-0 <s0@old>\n")
            f.write("OLD-UIDL-2 %s\n" % exported[2][1])
            f.write("OLD-UIDL-9 <gone@old>\n")
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "uidl", "import",
                               "-u", "e", path)
        assert "ref=<gone@old> result=not found" in out, out
        assert out.count("result=imported") == 2, out
        got = _uidls_by_subject(dc, "e")
        assert got["s0"] == "OLD-UIDL-0" and got["s2"] == "OLD-UIDL-2", got
        _, out2, _ = dc.doveadm("popvault", "uidl", "export", "-u", "e")
        assert "OLD-UIDL-0 " in out2 and "OLD-UIDL-2 " in out2, out2
        # garbage: refused as a whole with a clear error, nothing changes
        with open(path, "w") as f:
            f.write("GOOD-1 <s1@old>\nthis line has\ttabs and no ref\x01\n")
        rc, out, err = dc.doveadm("popvault", "uidl", "import", "-u", "e",
                                  path, check=False)
        assert rc == 65, (rc, out, err)
        assert "line 2" in err and "nothing imported" in err, err
        assert _uidls_by_subject(dc, "e")["s1"] == got["s1"]

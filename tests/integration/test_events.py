"""Every action popvault takes is a named Dovecot event with the fields
docs/events.md promises; dovecot-conf/conf.d/91-popvault-metrics.conf
counts them.

The events are captured the way an admin would: the shipped metric blocks
get an event_exporter (json, transport=log, so the stats process writes
each event into the log) and "doveadm stats dump" reads the counters."""

import json
import os
import re
import secrets

from harness import User, by_version, make_message
from crypt_util import crypt_dovecot, enc_fields, message_files, new_file
from policy_util import deliver_numbered, pop3_session

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
METRICS_CONF = os.path.join(ROOT, "dovecot-conf", "conf.d", by_version(
    "91-popvault-metrics.conf", "91-popvault-metrics-24.conf"))

# the actions the issue names; each must be triggered below
TRIGGERED = ("popvault_policy_action", "popvault_login_delay_refused",
             "popvault_crypt_damaged", "popvault_crypt_unlock_failed")


def documented_events():
    """{event name: [field names]} from the table in docs/events.md."""
    with open(os.path.join(ROOT, "docs", "events.md"), encoding="utf-8") as f:
        doc = f.read()
    events = {}
    for line in doc.splitlines():
        m = re.match(r"^\|\s*`(popvault_[a-z0-9_]+)`\s*\|", line)
        if not m:
            continue
        fields_cell = line.strip().strip("|").split("|")[-1]
        # field names are the backquoted words not inside parentheses
        fields_cell = re.sub(r"\([^)]*\)", "", fields_cell)
        events[m.group(1)] = re.findall(r"`([a-z_]+)`", fields_cell)
    assert events, "no event table in docs/events.md"
    return events


def code_events():
    names = set()
    for dirpath, _, files in os.walk(os.path.join(ROOT, "plugin")):
        for fn in files:
            if fn.endswith(".c"):
                with open(os.path.join(dirpath, fn), encoding="utf-8") as f:
                    names.update(re.findall(
                        r'set_name\("(popvault_[a-z0-9_]+)"\)', f.read()))
    return names


def _metrics_conf(exporter):
    with open(METRICS_CONF, encoding="utf-8") as f:
        conf = f.read()
    # ship every counted event to the exporter as well
    conf = re.sub(r"(metric \w+ \{\n)", r"\1  exporter = %s\n" % exporter,
                  conf)
    return (by_version("event_exporter %s {\n  format = json\n"
                       "  format_args = time-rfc3339\n  transport = log\n}\n",
                       "event_exporter %s {\n  format = json\n"
                       "  time_format = rfc3339\n  driver = log\n}\n")
            % exporter + conf)


def _exported(dc):
    out = []
    for line in dc.log().splitlines():
        i = line.find('{"event":"popvault_')
        if i >= 0:
            out.append(json.loads(line[i:]))
    return out


def _wait_exported(dc, name, n=1):
    dc.wait_log(r'\{"event":"%s"' % name, count=n)
    return [e for e in _exported(dc) if e["event"] == name]


def test_docs_list_every_event_in_the_code():
    documented = documented_events()
    in_code = code_events()
    assert in_code - set(documented) == set(), \
        "events missing from docs/events.md: %s" % sorted(
            in_code - set(documented))
    assert set(documented) - in_code == set(), \
        "docs/events.md names events the code lacks: %s" % sorted(
            set(documented) - in_code)
    with open(METRICS_CONF, encoding="utf-8") as f:
        counted = set(re.findall(r"filter = event=(\w+)", f.read()))
    for name in TRIGGERED + ("popvault_crypt_save_refused",):
        assert name in counted, "%s has no metric block" % name


def test_events_fire_with_documented_fields():
    documented = documented_events()
    users = [User("pol", fields={"popvault_after_retr": "delete"}),
             User("ret", fields={"popvault_retain_unread": "1d"}),
             User("ld", fields={"popvault_login_delay": "1h",
                                "popvault_login_delay_mode": "refuse"}),
             User("lde", fields={"popvault_login_delay": "1h"}),
             User("dmg", fields=enc_fields()),
             User("lock", fields=enc_fields())]
    with crypt_dovecot(users, extra_conf=_metrics_conf("pvtest")) as dc:
        # policy action at POP3 QUIT
        deliver_numbered(dc, "pol", 1)
        assert pop3_session(dc, "pol", retr=[1]).startswith("+OK")

        # retention removal by "doveadm popvault sweep", two days later
        deliver_numbered(dc, "ret", 1)
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "sweep", "-u",
                               "ret", faketime="+2d")
        assert "result=removed" in out, out

        # LOGIN-DELAY refusal, and an empty session (the default mode)
        dc.pop3("ld").quit()
        p = dc.pop3()
        p.command("USER ld")
        assert p.command("PASS pw-ld").startswith("-ERR [LOGIN-DELAY]")
        p.close()
        dc.pop3("lde").quit()
        p = dc.pop3("lde")
        assert p.stat() == (0, 0)
        p.quit()

        # decryption failure: one bit flipped in a stored message
        before = message_files(dc, "dmg")
        dc.deliver("dmg", make_message("damaged"))
        path = new_file(dc, "dmg", before)
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data[len(data) // 2] ^= 0x01
        with open(path, "wb") as f:
            f.write(data)
        p = dc.pop3("dmg")
        assert p.command("RETR 1").startswith("-ERR")
        p.close()

        # key unlock failure: the master key changed under stored keys
        dc.deliver("lock", make_message("locked"))
        with open(dc.master_key, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        p = dc.pop3("lock")
        assert p.command("RETR 1").startswith("-ERR")
        p.close()

        seen = {}
        for name in TRIGGERED:
            got = _wait_exported(
                dc, name, n=2 if name == "popvault_login_delay_refused" else 1)
            assert got, "no %s event exported; log:\n%s" % (
                name, dc.log_tail(60))
            seen[name] = got
        for name in TRIGGERED:
            for e in seen[name]:
                missing = [f for f in documented[name]
                           if f not in e.get("fields", {})]
                assert not missing, (name, missing, e)
                assert "popvault" in e.get("categories", []), e

        reasons = {(e["fields"]["user"], e["fields"]["reason"],
                    e["fields"]["action"])
                   for e in seen["popvault_policy_action"]}
        assert ("pol", "after_retr", "delete") in reasons, reasons
        assert ("ret", "retain_unread", "expunge") in reasons, reasons
        modes = {}
        for e in seen["popvault_login_delay_refused"]:
            ld = e["fields"]
            assert int(ld["login_delay"]) == 3600, ld
            assert int(ld["wait"]) > 3500, ld
            modes[ld["user"]] = ld["mode"]
        assert modes == {"ld": "refuse", "lde": "empty"}, modes
        dmg = seen["popvault_crypt_damaged"][0]["fields"]
        assert dmg["mailbox"] == "INBOX" and int(dmg["uid"]) == 1, dmg

        # the shipped metric blocks count them
        _, out, _ = dc.doveadm("-f", "tab", "stats", "dump")
        rows = [l.split("\t") for l in out.splitlines()]
        header = rows[0]
        counts = {}
        for r in rows[1:]:
            row = dict(zip(header, r))
            if row.get("field") == "duration":
                counts[row["metric_name"]] = int(row["count"])
        for name in TRIGGERED:
            assert counts.get(name, 0) >= 1, (name, out)
        assert counts["popvault_policy_action"] >= 2, out

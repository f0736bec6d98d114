"""Global popvault_* values on each Dovecot host (issue 16).

Dovecot 2.4 knows every popvault_* name from popvault's settings module
and runs popvault-settings.c's validation in doveconf: a wrong global value
or a typo'd global name stops Dovecot at start-up with a message naming
the setting (and value). Dovecot 2.3 has no such hook: there the same
configuration starts and every popvault user's login fails instead. Values
inside protocol pop3 {} apply to POP3 only on both."""

import re

from harness import DOVECOT_24, HarnessError, User, dovecot, make_message


def _start_fails(plugin):
    try:
        with dovecot([User("u")], plugin=plugin):
            pass
    except HarnessError as e:
        return str(e)
    raise AssertionError("Dovecot started with %r" % plugin)


def _login_fails(plugin, log_pattern):
    with dovecot([User("u")], plugin=plugin) as dc:
        p = dc.pop3()
        p.command("USER u")
        r = p.command("PASS " + dc.users["u"].password)
        assert r.startswith("-ERR [SYS/TEMP]"), r
        p.close()
        return dc.wait_log(log_pattern).group(0)


def test_invalid_global_value():
    plugin = {"popvault_after_retr": "shred"}
    if DOVECOT_24:
        text = _start_fails(plugin)
        assert "Fatal: Error in configuration file" in text, text
    else:
        text = _login_fails(plugin, r"Error: popvault: user u: Invalid .*")
    assert "Invalid popvault_after_retr=shred: unknown action" in text, text


def test_typo_in_global_name():
    plugin = {"popvault_afer_retr": "keep"}
    if DOVECOT_24:
        text = _start_fails(plugin)
        assert "Unknown setting: popvault_afer_retr" in text, text
    else:
        text = _login_fails(plugin, r"Error: popvault: user u: Unknown .*")
        assert "Unknown setting popvault_afer_retr (typo?)" in text, text


def test_protocol_pop3_value_applies_to_pop3_only():
    # 2.3 has plugin {} inside protocol {}; 2.4 takes the setting itself
    conf = ("protocol pop3 {\n  popvault_after_retr = delete\n}\n"
            if DOVECOT_24 else
            "protocol pop3 {\n  plugin {\n    popvault_after_retr = delete\n"
            "  }\n}\n")
    with dovecot([User("u")], plugin={"popvault_on_dele": "expunge"},
                 extra_conf=conf) as dc:
        dc.deliver("u", make_message("one"))
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "status", "-u", "u")
        # doveadm is no pop3 process: the global default
        assert re.search(r"after_retr=keep\b", out), out
        p = dc.pop3("u")
        p.retr(1)
        assert p.quit().startswith("+OK")
        # pop3 applied delete after RETR
        p = dc.pop3("u")
        assert p.stat()[0] == 0
        p.quit()

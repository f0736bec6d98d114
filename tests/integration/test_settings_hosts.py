"""Global popvault_* values on each Dovecot host (issue 16).

Dovecot 2.4 knows every popvault_* name from popvault's settings module
and runs popvault-settings.c's validation in doveconf: a wrong global value
or a typo'd global name stops Dovecot at start-up with a message naming
the setting (and value). Dovecot 2.3 has no such hook: there the same
configuration starts and every popvault user's login fails instead. Values
inside protocol pop3 {} apply to POP3 only on both."""

import os
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


def _uncommented_example(path):
    """The example file with every commented-out setting switched on
    (prose comments start with "# " or "##"), except mail_plugins, which
    the harness sets, and the key settings, which name files and
    passwords that exist only on a real server."""
    out, depth, skip = [], 0, False
    for line in open(path, encoding="utf-8").read().splitlines():
        text = line.lstrip()
        if depth == 0 and not re.match(r"#[^\s#]", text):
            out.append(line)
            continue
        if depth == 0 and not text.startswith("#"):
            continue
        conf = text[1:] if text.startswith("#") else text
        if depth == 0:
            skip = re.match(r"(mail_plugins|popvault_master_key|"
                            r"popvault_key_password)\b", conf) is not None
        depth += conf.count("{") - conf.count("}")
        if not skip:
            out.append(conf)
    return "\n".join(out) + "\n"


def test_example_config_is_accepted():
    """dovecot-conf/conf.d/90-popvault*.conf, uncommented, is accepted by
    this host's doveconf and its values reach the user."""
    name = "90-popvault-24.conf" if DOVECOT_24 else "90-popvault.conf"
    path = os.path.join(os.path.dirname(__file__), "..", "..",
                        "dovecot-conf", "conf.d", name)
    conf = _uncommented_example(path)
    assert "popvault_list_window = 30d" in conf, conf
    # the example's own import_environment and login_plugins: CAPA
    with dovecot([User("u")], extra_conf=conf) as dc:
        _, out, _ = dc.doveadm("-f", "flow", "popvault", "status", "-u", "u")
        assert "list_window=30d" in out and "list_since=2026-01-01" in out, \
            out
        p = dc.pop3()
        r, lines = p.multi("CAPA")
        p.close()
        assert "LOGIN-DELAY 900 USER" in lines, lines

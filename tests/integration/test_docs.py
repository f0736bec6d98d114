"""docs/settings.md and the parser's table in plugin/popvault-settings.c
name the same popvault_* settings, so the reference cannot drift."""

import os
import re

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def parser_settings():
    src = _read("plugin/popvault-settings.c")
    prefix = re.search(r'#define\s+POPVAULT_SETTING_PREFIX\s+"([^"]+)"',
                       src + _read_headers())
    prefix = prefix.group(1) if prefix else "popvault_"
    # the DEF() entries of the table, not the #define DEF(name, ...) itself
    names = re.findall(r'^\s*DEF\("([a-z0-9_]+)"', src, re.M)
    assert names, "no DEF(\"...\") entries found in popvault-settings.c"
    return {prefix + n for n in names}


def _read_headers():
    out = []
    for d in ("plugin", "include"):
        base = os.path.join(ROOT, d)
        for dirpath, _, files in os.walk(base):
            for fn in files:
                if fn.endswith(".h"):
                    with open(os.path.join(dirpath, fn),
                              encoding="utf-8") as f:
                        out.append(f.read())
    return "\n".join(out)


def documented_settings():
    doc = _read("docs/settings.md")
    # a setting is documented where a table row starts with its name
    rows = re.findall(r'^\|\s*`(popvault_[a-z0-9_]+)`\s*\|', doc, re.M)
    assert len(rows) == len(set(rows)), "a setting is documented twice"
    return set(rows)


def test_settings_reference_matches_parser_table():
    parsed = parser_settings()
    documented = documented_settings()
    assert parsed - documented == set(), \
        "in the parser, missing from docs/settings.md: %s" % \
        sorted(parsed - documented)
    assert documented - parsed == set(), \
        "in docs/settings.md, unknown to the parser: %s" % \
        sorted(documented - parsed)


def test_settings_reference_rows_are_complete():
    # every row gives values, default and an example that sets the setting
    doc = _read("docs/settings.md")
    for line in doc.splitlines():
        m = re.match(r'^\|\s*`(popvault_[a-z0-9_]+)`\s*\|', line)
        if not m:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4 and all(cells), line
        assert cells[3].startswith("`%s = " % m.group(1)), line

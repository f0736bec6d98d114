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


# ---- licence (issue 15 item 12) ----

MIT_GRANT = ("Permission is hereby granted, free of charge, to any person "
             "obtaining a copy of this software")


def _tracked_files():
    import subprocess
    p = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"],
                       capture_output=True)
    if p.returncode == 0:
        return [n for n in p.stdout.decode().split("\0") if n]
    names = []
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "build"))]
        names += [os.path.relpath(os.path.join(dirpath, f), ROOT)
                  for f in files]
    return names


def _flat(text):
    return " ".join(text.split())


def test_every_licence_file_a_source_names_exists_and_is_mit():
    named = {}
    for rel in _tracked_files():
        if not rel.endswith((".c", ".h", ".py", ".sh", ".am", ".ac")):
            continue
        with open(os.path.join(ROOT, rel), encoding="utf-8",
                  errors="replace") as f:
            head = f.read(2000)
        for m in re.finditer(r"see the included (\S+) file", head):
            named.setdefault(m.group(1), []).append(rel)
    assert "COPYING" in named, "no source header names COPYING"
    for licence, sources in named.items():
        path = os.path.join(ROOT, licence)
        assert os.path.isfile(path), "%s named by %s does not exist" % (
            licence, sources[:3])
        text = _flat(_read(licence))
        assert text.startswith("MIT License"), licence
        assert "Copyright (c) 2026 popvault authors" in text, licence
        assert MIT_GRANT in text, licence
    # shipped: in the dist tarball and in the .deb's documents
    assert re.search(r"^EXTRA_DIST = \\\n(\t\S+ \\\n)*\tCOPYING \\$",
                     _read("Makefile.am"), re.M), "COPYING not in EXTRA_DIST"
    assert "COPYING" in _read("debian/dovecot-popvault.docs").split()


def test_debian_copyright_is_dep5_and_says_mit():
    paragraphs = [p for p in re.split(r"\n\s*\n", _read("debian/copyright"))
                  if p.strip()]

    def fields(par):
        out, key = {}, None
        for line in par.splitlines():
            if line.startswith((" ", "\t")):
                out[key] += "\n" + line.strip()
            else:
                key, _, value = line.partition(":")
                out[key] = value.strip()
        return out

    header = fields(paragraphs[0])
    assert header["Format"] == \
        "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    files = [fields(p) for p in paragraphs if p.startswith("Files:")]
    assert [f["Files"] for f in files] == ["*"], files
    assert files[0]["License"] == "MIT", files
    assert files[0]["Copyright"] == "2026 popvault authors", files
    standalone = [fields(p) for p in paragraphs if p.startswith("License:")]
    assert len(standalone) == 1, standalone
    text = standalone[0]["License"]
    assert text.split("\n", 1)[0] == "MIT", text
    assert MIT_GRANT in _flat(text.replace("\n.\n", "\n")), text
    assert _flat(text.split("\n", 1)[1].replace("\n.", "")) == \
        _flat(_read("COPYING").split("\n", 3)[3]), \
        "debian/copyright's MIT text differs from COPYING"


# ---- no secret on a documented command line (issue 15 item 10) ----

DOC_FILES = ["README.md"] + ["docs/" + f for f in
                             sorted(os.listdir(os.path.join(ROOT, "docs")))
                             if f.endswith(".md")]


def _doveadm_commands(text):
    """Every doveadm invocation the text shows: inline code spans and
    lines of code blocks that name doveadm (a span broken over two lines
    is joined)."""
    cmds = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S):
        cmds += [l for l in block.splitlines() if "doveadm" in l]
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    cmds += [" ".join(c.split()) for c in
             re.findall(r"`([^`]*doveadm[^`]*)`", outside)]
    return cmds


def test_docs_give_no_password_on_a_doveadm_command_line():
    seen_stdin = 0
    for rel in DOC_FILES:
        for cmd in _doveadm_commands(_read(rel)):
            # a password setting on the command line (doveadm -o)
            m = re.search(r"popvault_key_password=(\S*)", cmd)
            assert not m or m.group(1) == "%w", (rel, cmd)
            m = re.search(r"\bpopvault\s+(key\s+\w+|encrypt|decrypt|verify)"
                          r"\b(.*)", cmd)
            if not m:
                continue
            # after the command name: -p/-o/-r/-n take the secret as an
            # argument; only the stdin forms may be shown
            assert not re.search(r"(^|[\s\[(|])-[porn]\b", m.group(2)), \
                (rel, cmd)
            seen_stdin += bool(re.search(r"\s-[PORN]\b", m.group(2)))
    # the stdin forms are what the docs show instead
    assert seen_stdin >= 5, seen_stdin


# ---- the after_retr snippets do what the docs say (issue 19 item 4) ----

def _after_retr_snippets(rel):
    """(plugin settings, the rest of the block) for each code block of rel
    that sets popvault_after_retr in a plugin {} section."""
    out = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", _read(rel),
                            re.M | re.S):
        m = re.search(r"^plugin \{\n(.*?)^\}\n", block, re.M | re.S)
        if not m or "popvault_after_retr" not in m.group(1):
            continue
        settings = dict(
            (k.strip(), v.strip()) for k, _, v in
            (l.partition("=") for l in m.group(1).splitlines()
             if l.strip() and not l.strip().startswith("#")))
        rest = block[:m.start()] + block[m.end():]
        rest = "\n".join(l for l in rest.splitlines()
                         if not l.startswith("#"))
        out.append((settings, rest.strip()))
    return out


def test_after_retr_snippets_parse_and_behave():
    import subprocess
    from harness import DOVECOT, User, dovecot
    from policy_util import deliver_numbered, imap_inventory, \
        pop3_session, subjects

    snippets = _after_retr_snippets("docs/policies.md")
    kinds = [s["popvault_after_retr"] for s, _ in snippets]
    assert kinds == ["delete", "keep", "move:Trash"], kinds
    guide = _after_retr_snippets("docs/admin-guide.md")
    assert [s for s, _ in guide] == [snippets[1][0]], guide
    for settings, rest in snippets:
        with dovecot([User("u")], plugin=settings, extra_conf=rest) as dc:
            # the whole snippet is in the running configuration
            doveconf = os.path.join(os.path.dirname(DOVECOT), "doveconf")
            if not os.access(doveconf, os.X_OK):
                doveconf = "doveconf"
            conf = subprocess.run([doveconf, "-c", dc.config_path, "-n"],
                                  capture_output=True, text=True,
                                  check=True).stdout
            for k, v in settings.items():
                assert "%s = %s" % (k, v) in conf, (k, conf)
            if rest:
                # doveconf 2.3 prints 7d as "1 weeks", 2.4 as written
                assert re.search(r"mailbox Trash \{[^}]*autoexpunge = "
                                 r"(1 weeks|7 days|7d)\n", conf), conf

            deliver_numbered(dc, "u", 2)
            assert pop3_session(dc, "u", retr=[1]).startswith("+OK")
            inv = imap_inventory(dc, "u")
            kind = settings["popvault_after_retr"]
            if kind == "delete":
                # gone from the server: what the docs warn about
                assert subjects(inv, "INBOX") == ["m2"], inv
                assert subjects(inv, "Trash") == [], inv
            elif kind == "keep":
                assert subjects(inv, "INBOX") == ["m1", "m2"], inv
                _, out, _ = dc.doveadm("-f", "flow", "popvault", "sweep",
                                       "-u", "u", faketime="+2d")
                assert out.strip() == "", out
                _, out, _ = dc.doveadm("-f", "flow", "popvault", "sweep",
                                       "-u", "u", faketime="+4d")
                assert "reason=retain_downloaded" in out and \
                    out.count("result=removed") == 1, out
                assert subjects(imap_inventory(dc, "u"), "INBOX") == ["m2"]
            else:
                assert subjects(inv, "INBOX") == ["m2"], inv
                assert subjects(inv, "Trash") == ["m1"], inv

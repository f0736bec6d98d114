#!/usr/bin/env python3
"""Fails when the folders of plugin/ depend on each other in a circle
(README.md, "How it is put together").

A folder depends on another when one of its .c files, or a header that
belongs to it, includes a header of the other. A header belongs to the
folder whose .c files define the functions it declares; a header that
declares none (types and macros only) belongs to no folder, and what it
includes counts for whoever includes it. plugin/ itself is a folder.

    tests/layers/check-layers.py [SOURCE_DIR]

Prints the folder graph and exits 0, or names each circle with the
#include lines that make it and exits 1.
"""

import os
import re
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                       os.path.join(os.path.dirname(__file__), "..", ".."))
INCLUDE_RX = re.compile(r'^\s*#\s*include\s+"([^"]+\.h)"', re.M)
# name(params) { at the start of a line: a function definition (Dovecot
# style puts the return type on the line before or in front of the name)
DEFINITION_RX = re.compile(
    r"^(?:[A-Za-z_][^\n;{}()#]*?[\s*])?([A-Za-z_]\w*)\([^;{}]*?\)"
    r"[\s\w()]*?\{", re.M)
CALL_RX = re.compile(r"\b([A-Za-z_]\w*)\s*\(")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def code(text):
    """text without comments, string literals and preprocessor lines."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r'"(?:\\.|[^"\\\n])*"', '""', text)
    text = re.sub(r"^\s*#(?:[^\n]*\\\n)*[^\n]*", "", text, flags=re.M)
    return text


def folder_of(path):
    rel = os.path.relpath(os.path.dirname(path), ROOT)
    return rel


def sources():
    c_files, headers = [], {}
    for top in ("plugin", "include"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for fn in sorted(files):
                path = os.path.join(dirpath, fn)
                if fn.endswith(".c") and top == "plugin":
                    c_files.append(path)
                elif fn.endswith(".h"):
                    headers[fn] = path
    return sorted(c_files), headers


def main():
    c_files, headers = sources()
    defined = {}  # function name -> folders defining it
    for path in c_files:
        for name in DEFINITION_RX.findall(code(read(path))):
            defined.setdefault(name, set()).add(folder_of(path))

    home, problems = {}, []
    for name, path in sorted(headers.items()):
        folders = set()
        for fn in set(CALL_RX.findall(code(read(path)))):
            folders |= defined.get(fn, set())
        if len(folders) > 1:
            problems.append("%s declares functions of %s: one header per "
                            "folder" % (name, " and ".join(sorted(folders))))
        home[name] = folders.pop() if len(folders) == 1 else None

    def includes(path):
        return [h for h in INCLUDE_RX.findall(read(path)) if h in headers]

    edges = {}  # (from, to) -> why

    def add(src_folder, header, via, seen):
        if header in seen:
            return
        seen.add(header)
        if home[header] is None:
            # types and macros only: its includes count for the includer
            for inner in includes(headers[header]):
                add(src_folder, inner, via + " -> " + inner, seen)
        elif home[header] != src_folder:
            edges.setdefault((src_folder, home[header]), via)

    for path in c_files:
        rel = os.path.relpath(path, ROOT)
        for h in includes(path):
            add(folder_of(path), h, '%s: #include "%s"' % (rel, h), set())
    for name, path in sorted(headers.items()):
        if home[name] is not None:
            for h in includes(path):
                add(home[name], h, 'include/%s: #include "%s"' % (name, h),
                    set())

    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    for a in sorted(graph):
        print("%-18s -> %s" % (a, ", ".join(sorted(graph[a]))))
    for group in circles(graph):
        problems.append("circle between %s:\n%s" % (
            ", ".join(sorted(group)),
            "\n".join("    %s -> %s: %s" % (a, b, why)
                      for (a, b), why in sorted(edges.items())
                      if a in group and b in group)))
    for p in problems:
        print("check-layers: " + p, file=sys.stderr)
    if problems:
        return 1
    print("check-layers: %d folders, no circle" % len(
        {f for e in edges for f in e}))
    return 0


def circles(graph):
    """The groups of folders that reach each other (Tarjan's strongly
    connected components of more than one folder)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


if __name__ == "__main__":
    sys.exit(main())

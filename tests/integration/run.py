#!/usr/bin/env python3
"""Runs popvault's integration tests against a real Dovecot.

Every test_*.py in this directory is a module; every test_* function in it
is a test. A test passes when it returns, fails on any exception. The last
line is "N passed, N failed" (", N skipped" when a test raised
unittest.SkipTest: it says why and does not count as passed); the exit
code is non-zero on any failure or when no test passed.
"""

import argparse
import importlib.util
import os
import sys
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def discover(selected):
    tests = []
    for fname in sorted(os.listdir(HERE)):
        if not (fname.startswith("test_") and fname.endswith(".py")):
            continue
        spec = importlib.util.spec_from_file_location(fname[:-3],
                                                      os.path.join(HERE, fname))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for name in dir(mod):
            fn = getattr(mod, name)
            if name.startswith("test_") and callable(fn):
                full = "%s::%s" % (fname[:-3], name)
                if not selected or any(s in full for s in selected):
                    tests.append((full, fn, fn.__code__.co_firstlineno))
    # keep source order inside a file
    tests.sort(key=lambda t: (t[0].split("::")[0], t[2]))
    return [(n, f) for n, f, _ in tests]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=os.environ.get("POPVAULT_BUILD_DIR",
                                                          "build"))
    ap.add_argument("-k", action="append", default=[],
                    help="run only tests whose name contains this")
    ap.add_argument("-x", action="append", default=[],
                    help="skip tests whose name contains this")
    args = ap.parse_args()

    os.environ["POPVAULT_BUILD_DIR"] = os.path.abspath(args.build_dir)
    sys.path.insert(0, HERE)
    import harness
    harness.BUILD_DIR = os.environ["POPVAULT_BUILD_DIR"]
    try:
        harness.require_binaries()
    except harness.HarnessError as e:
        print("integration: cannot run: %s" % e)
        print("0 passed, 1 failed")
        return 1

    tests = [(n, f) for n, f in discover(args.k)
             if not any(x in n for x in args.x)]
    passed = failed = skipped = 0
    failures = []
    for name, fn in tests:
        start = time.time()
        try:
            fn()
        except unittest.SkipTest as e:
            skipped += 1
            print("skip %s: %s" % (name, e))
        except Exception:
            failed += 1
            failures.append(name)
            print("FAIL %s (%.1fs)" % (name, time.time() - start))
            traceback.print_exc()
        else:
            passed += 1
            print("ok   %s (%.1fs)" % (name, time.time() - start))
        sys.stdout.flush()
    if failures:
        print("\nfailed tests:\n  " + "\n  ".join(failures))
    print("%d passed, %d failed%s" % (
        passed, failed, ", %d skipped" % skipped if skipped else ""))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

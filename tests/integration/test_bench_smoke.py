"""The benchmark's quick mode runs end to end: one private Dovecot, the
three users, every workload row, a table and JSON. Timing is never
asserted: this only keeps scripts/bench.sh from rotting."""

import json
import os
import subprocess
import sys
import tempfile

import harness

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
WORKLOADS = ("lmtp", "pop3_retr", "imap_envelope", "pop3_big", "pop3_big_rss",
             "imap_partial", "pop3_uidl", "pop3_uidl_cold", "sweep") + tuple(
                 "webmail_%s_%s" % (phase, cmd) for phase in ("first", "warm")
                 for cmd in ("hdr", "envbs", "sort", "search", "total")) + (
                     "webmail_cache_size",)
# Only hang guards, never a judgement of speed: the quick run takes about
# a minute on an idle 2-core machine and several times that when the
# machine is shared (each client call has its own limit inside).
CLIENT_TIMEOUT = 600
RUN_TIMEOUT = 3600
USERS = ("plain", "mailcrypt", "popvault")


def _run_bench(*args):
    """Builds the benchmark clients and runs bench.py --quick with args
    into a fresh directory; returns its results.json and table.txt, or
    None when not root (the benchmark needs it)."""
    if os.getuid() != 0:
        print("skipped: the benchmark needs root")
        return None
    build = os.path.abspath(harness.BUILD_DIR)
    bindir = os.path.join(build, "bench")
    subprocess.run(["make", "-s", "-C", os.path.join(TOP, "bench"),
                    "O=" + bindir], check=True, capture_output=True,
                   timeout=CLIENT_TIMEOUT)
    out = tempfile.mkdtemp(prefix="popvault-bench-smoke-")
    try:
        p = subprocess.run(
            [sys.executable, os.path.join(TOP, "bench", "bench.py"),
             "--quick"] + list(args) +
            ["--build-dir", build, "--bin-dir", bindir,
             "--out", out, "--timeout", str(CLIENT_TIMEOUT)],
            capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        with open(os.path.join(out, "results.json")) as f:
            data = json.load(f)
        with open(os.path.join(out, "table.txt")) as f:
            return data, f.read()
    finally:
        subprocess.run(["rm", "-rf", out])


def test_bench_quick_produces_table_and_json():
    run = _run_bench()
    if run is None:
        return
    data, table = run
    assert data["mode"] == "quick"
    assert data["users"] == list(USERS)
    for key in ("popvault_encrypt", "popvault_sweep", "mail_crypt"):
        assert key in data["features"], data["features"]
    rows = {r["id"]: r for r in data["workloads"]}
    assert sorted(rows) == sorted(WORKLOADS), sorted(rows)
    for wid, row in rows.items():
        assert set(row["results"]) == set(USERS), (wid, row)
        if wid == "sweep":
            continue   # may be n/a until the sweep command exists
        for u in USERS:
            r = row["results"][u]
            assert r is not None and r["median"] > 0, (wid, u, r)
    if rows["sweep"]["results"]["popvault"] is None:
        assert "n/a" in data["features"]["popvault_sweep"]

    header = [l for l in table.splitlines() if l.startswith("workload")]
    assert header and all(u in header[0] for u in USERS), table
    for row in data["workloads"]:
        assert row["title"] in table, (row["title"], table)
    assert "feature popvault_encrypt:" in table, table


def test_bench_growth_rows():
    """--only growth with small mailboxes: the delivery-into-a-grown-
    mailbox rows (wall time and callgrind) come out for plain and
    popvault, and only when asked for."""
    run = _run_bench("--only", "growth", "--grow-mid", "100",
                     "--grow-large", "200", "--grow-msgs", "5",
                     "--grow-large-msgs", "3", "--grow-cg-msgs", "2",
                     "--grow-large-cg-msgs", "2", "--reps", "1")
    if run is None:
        return
    data, _ = run
    rows = {r["id"]: r for r in data["workloads"]}
    grow = sorted(w for w in rows if w.startswith("lmtp_into_"))
    assert grow == sorted("lmtp_into_%s%s" % (lvl, ir) for lvl in (
        "0", "grow_mid", "grow_large") for ir in ("", "_ir")), grow
    for wid in grow:
        for u in ("plain", "popvault"):
            r = rows[wid]["results"][u]
            assert r is not None and r["median"] > 0, (wid, u, r)
        assert rows[wid]["results"]["mailcrypt"] is None
    # without --growth the rows are left out: the test above asks for
    # exactly WORKLOADS

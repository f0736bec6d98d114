"""Delivery into a grown mailbox (issue 18, goal 4): a plain user and an
encrypting popvault user in one Dovecot, each first given N messages, then
K x 20 KB delivered over one LMTP connection; prints the wall time and,
with MODE strace/trace/callgrind, keeps the lmtp process's profile in
OUT (default /tmp/delivery-growth).

  delivery_growth.py N K MODE [debug] [seedlmtp]

MODE: none (3 interleaved timed runs), strace (-c), trace (file and fd
syscalls), callgrind. seedlmtp: seed by LMTP (the transaction log holds
the deliveries, so the two users' logs are at different phases of
rotation; before popvault named encrypted files with their plaintext
sizes, every popvault message also got a G<guid> dovecot-uidlist
field); otherwise one delivered file is copied N times into cur/.
Needs root and build/bench/pv-lmtp (make -C bench). The benchmark's
rows are bench.py --growth (docs/performance.md).
The files dovecot.* of both users are kept in OUT/files.<user>.N<n>."""
import os, sys, time, shutil, subprocess, secrets, glob, re
TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
os.environ.setdefault("POPVAULT_BUILD_DIR", os.path.join(TOP, "build"))
OUT = os.environ.get("OUT", "/tmp/delivery-growth")
import harness
harness.BUILD_DIR = os.environ["POPVAULT_BUILD_DIR"]
from harness import Dovecot, User, make_message

W = os.path.join(OUT, "w")
MODE = os.path.join(W, "mode")
N = int(sys.argv[1]); K = int(sys.argv[2]); mode = sys.argv[3]
debug = "debug" in sys.argv[4:]
seed_lmtp = "seedlmtp" in sys.argv[4:]
PVL = os.path.join(harness.BUILD_DIR, "bench", "pv-lmtp")
shutil.rmtree(W, ignore_errors=True); os.makedirs(W); os.chmod(W, 0o777)
master = os.path.join(W, "master.key")
open(master, "w").write(secrets.token_hex(32) + "\n")
wrapper = os.path.join(W, "lmtp.sh")
open(wrapper, "w").write("""#!/bin/sh
m=$(cat %s)
case "$m" in
strace) exec strace -f -c -o %s/strace.$$ /usr/lib/dovecot/lmtp "$@";;
trace) exec strace -f -o %s/trace.$$ -e trace=%%file,%%desc -y /usr/lib/dovecot/lmtp "$@";;
callgrind) f=%s/callgrind.$$; : > "$f"; chmod 666 "$f"; exec valgrind --tool=callgrind -q --vgdb=no --callgrind-out-file="$f" /usr/lib/dovecot/lmtp "$@";;
*) exec /usr/lib/dovecot/lmtp "$@";;
esac
""" % (MODE, W, W, W))
os.chmod(wrapper, 0o755)
open(MODE, "w").write("none")
users = [User("plain", fields={"mail_plugins": " "}),
         User("pv", fields={"mail_plugins": "popvault"})]
plugin = {"popvault_after_retr": "keep", "popvault_retain_downloaded": "14d",
          "popvault_uidl_ledger": "yes", "popvault_encrypt": "yes",
          "popvault_master_key": master}
extra = "service lmtp {\n  executable = %s\n  service_count = 1\n}\n" % wrapper
# more settings for the server, e.g. EXTRA_CONF="mail_fsync = never"
extra += os.environ.get("EXTRA_CONF", "") + "\n"
dc = Dovecot(users, userdb="sqlite", plugin=plugin, extra_conf=extra,
             debug=debug, name="d18")
dc.start()
os.chown(master, dc.mail_uid, dc.mail_gid)
def msg(i, size=20000):
    body = ("x" * 76 + "\r\n") * (size // 78)
    return make_message(subject="seed %d" % i, body=body)
try:
    for u in ("plain", "pv"):
        dc.deliver(u, msg(0, 2000))
    # seed: copy the one delivered file N-1 times into cur/
    for u in ("plain", "pv"):
        md = os.path.join(dc.home(u), "Maildir")
        src = (glob.glob(md + "/new/*") + glob.glob(md + "/cur/*"))[0]
        data = open(src, "rb").read()
        base = os.path.basename(src)
        m = re.search(r",S=(\d+)(?:,W=(\d+))?", base)
        suffix = m.group(0) if m else ""
        t0 = int(time.time()) - 86400
        if seed_lmtp and N:
            subprocess.run([PVL, "127.0.0.1", str(dc.ports["lmtp"]), u, str(N), "20000"], check=True)
        for i in range(0 if seed_lmtp else N):
            p = os.path.join(md, "cur", "%d.M%dP1.seed%s:2," % (t0, i, suffix))
            with open(p, "wb") as f:
                f.write(data)
            os.chown(p, dc.mail_uid, dc.mail_gid)
        dc.doveadm("mailbox", "status", "-u", u, "messages", "INBOX")
        dc.deliver(u, msg(1))   # warm-up
    res = {}
    for u in ["plain", "pv"] * (3 if mode == 'none' else 1):
        open(MODE, "w").write(mode)
        before = set(os.listdir(W))
        since = dc.log_size()
        t = time.time()
        subprocess.run([PVL, "127.0.0.1", str(dc.ports["lmtp"]), u, str(K), "20000", "900000"], check=True)
        el = time.time() - t
        open(MODE, "w").write("none")
        time.sleep(1.0)
        new = sorted(set(os.listdir(W)) - before)
        print("==", u, "N=%d K=%d %.2fs" % (N, K, el), new)
        for f in new:
            shutil.copy(os.path.join(W, f), os.path.join(OUT, "%s.%s.N%d") % (f.split(".")[0], u, N))
        if debug:
            open(os.path.join(OUT, "log.%s.N%d") % (u, N), "w").write(dc.log()[since:])
    for u in ("plain", "pv"):
        d = os.path.join(OUT, "files.%s.N%d") % (u, N)
        shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
        for f in glob.glob(os.path.join(dc.home(u), "Maildir", "dovecot*")):
            shutil.copy(f, d)
finally:
    dc.stop(); dc.cleanup()

#!/usr/bin/env python3
"""Measures POP3 download of N x SIZE messages for an encrypting user vs
a plain user on one private Dovecot (not a test; numbers vary per run).
  python3 bench/pop3-download.py --build-dir build [-n 500] [--size 20000]
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import harness
    harness.BUILD_DIR = os.path.abspath(args.build_dir)
    from harness import User, make_message
    from crypt_util import crypt_dovecot, enc_fields

    users = [User("plain", fields={"popvault_after_retr": "keep"}),
             User("enc", fields=enc_fields())]
    body = ("x" * 76 + "\r\n") * (args.size // 78)
    msgs = [make_message("m%d" % i, body=body) for i in range(args.n)]
    with crypt_dovecot(users, debug=False) as dc:
        deliver = {}
        for u in ("plain", "enc"):
            t = time.perf_counter()
            dc.deliver_many(u, msgs)
            deliver[u] = time.perf_counter() - t
        best = {"plain": 1e9, "enc": 1e9}
        for _ in range(args.rounds):
            for u in ("plain", "enc"):
                p = dc.pop3(u)
                t = time.perf_counter()
                total = 0
                for i in range(1, args.n + 1):
                    total += len(p.retr(i))
                best[u] = min(best[u], time.perf_counter() - t)
                p.quit()
        print("messages=%d size=%d bytes_per_session=%d" %
              (args.n, args.size, total))
        for u in ("plain", "enc"):
            print("%-5s deliver %.2fs  pop3 download best of %d: %.3fs" %
                  (u, deliver[u], args.rounds, best[u]))
        print("ratio enc/plain: download %.2fx, delivery %.2fx" %
              (best["enc"] / best["plain"], deliver["enc"] / deliver["plain"]))


if __name__ == "__main__":
    main()

"""The webmail folder-open workload of bench.py (issue 18): realistic
messages, and an IMAP client that times one command at a time.

A webmail client opening a folder sends, one after the other:
SELECT, the list view's header fields, ENVELOPE and BODYSTRUCTURE, a sort
by date and a subject search. Each command is timed from sending it to
its tagged reply, with nothing parsed while the clock runs: the reply is
checked afterwards (counts, and the same answer for every user).
"""

import base64
import os
import random
import re
import socket
import time
import unicodedata

# the subject word SEARCH looks for; no other vocabulary word contains it
SEARCH_WORD = "quarterly"

# (row id, short title, the command)
COMMANDS = [
    ("hdr", "UID FETCH HEADER.FIELDS (5)",
     "UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS "
     "(DATE FROM TO SUBJECT CONTENT-TYPE)])"),
    ("envbs", "FETCH ENVELOPE BODYSTRUCTURE",
     "FETCH 1:* (ENVELOPE BODYSTRUCTURE)"),
    ("sort", "UID SORT (DATE)", "UID SORT (DATE) UTF-8 ALL"),
    ("search", "SEARCH SUBJECT", "SEARCH SUBJECT " + SEARCH_WORD),
]

FIRST_NAMES = ["Anna", "Ben", "Chloé", "David", "Elif", "Frank", "Grete",
               "Hiroshi", "Ines", "Jürgen", "Karin", "Luis", "Marta",
               "Nils", "Olga", "Pierre", "Quentin", "Rosa", "Søren",
               "Tomasz", "Ulla", "Viktor", "Wen", "Xavier", "Yusuf", "Zoë"]
LAST_NAMES = ["Andersen", "Bauer", "Costa", "Dubois", "Eriksson", "Fischer",
              "García", "Hoffmann", "Ivanova", "Jansen", "Kowalski",
              "Lehmann", "Müller", "Nowak", "Olsen", "Petrov", "Rossi",
              "Schmidt", "Tanaka", "Weber"]
DOMAINS = ["example.com", "example.org", "mail.example.net",
           "shop.example", "lists.example.org", "bank.example"]
SUBJECT_WORDS = ["meeting", "project", "update", "invoice", "order",
                 "delivery", "report", "agenda", "holiday", "photos",
                 "contract", "budget", "review", "draft", "newsletter",
                 "reminder", "ticket", "release", "feedback", "schedule",
                 "Angebot", "Rechnung", "Termin", "réunion", "naïve",
                 "offer", "summary", "notes", "plan", "proposal"]
BODY_WORDS = ("the of and to in is that for it as was with be by on not he "
              "this are or his from at which but have an they you were "
              "their one all we can her has there been if more when will "
              "would who so no mailbox server client message folder list "
              "attachment please regards thanks meeting tomorrow week").split()
TZ = ["+0000", "+0100", "+0200", "-0500", "-0800", "+0530", "+0900"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
          "Oct", "Nov", "Dec"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def _encoded(text):
    """RFC 2047 for non-ASCII header text, as mail clients send it."""
    if all(ord(c) < 128 for c in text):
        return text
    return "=?UTF-8?B?%s?=" % base64.b64encode(text.encode()).decode()


def _person(rnd):
    first, last = rnd.choice(FIRST_NAMES), rnd.choice(LAST_NAMES)
    addr = "%s.%s@%s" % (first.lower(), last.lower(), rnd.choice(DOMAINS))
    addr = unicodedata.normalize("NFKD", addr).encode("ascii",
                                                       "ignore").decode()
    return '"%s" <%s>' % (_encoded("%s %s" % (first, last)), addr)


def _date(rnd):
    day = rnd.randrange(365)
    month, mday = min(day // 31, 11), day % 28 + 1
    return "%s, %d %s 2026 %02d:%02d:%02d %s" % (
        DAYS[day % 7], mday, MONTHS[month], rnd.randrange(24),
        rnd.randrange(60), rnd.randrange(60), rnd.choice(TZ))


def _text(rnd, size):
    lines, n = [], 0
    while n < size:
        line = " ".join(rnd.choice(BODY_WORDS) for _ in range(12))
        lines.append(line)
        n += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def _b64(rnd, size):
    data = base64.b64encode(rnd.randbytes(size * 3 // 4)).decode()
    return "\r\n".join(data[i:i + 76] for i in range(0, len(data), 76)) + \
        "\r\n"


def message(rnd, i, size):
    """One message of about size bytes: plain text, text+HTML, or mixed
    with one or two base64 attachments; varied senders, dates, time
    zones, encoded words, Received/DKIM/list headers."""
    subject = " ".join(rnd.choice(SUBJECT_WORDS)
                       for _ in range(rnd.randrange(2, 6)))
    if i % 20 == 7:
        subject = "%s %s" % (SEARCH_WORD.capitalize(), subject)
    subject = rnd.choice(["", "", "Re: ", "Fwd: ", "AW: "]) + subject
    head = []
    for hop in range(rnd.randrange(2, 5)):
        head.append("Received: from mx%d.%s (mx%d.%s [192.0.2.%d])\r\n"
                    "\tby mail.popvault.test with ESMTPS id %08x\r\n"
                    "\tfor <user@popvault.test>; %s" % (
                        hop, rnd.choice(DOMAINS), hop, rnd.choice(DOMAINS),
                        rnd.randrange(1, 255), rnd.getrandbits(32),
                        _date(rnd)))
    if rnd.random() < 0.6:
        head.append("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; "
                    "d=%s; s=sel1;\r\n\th=from:to:subject:date:message-id; "
                    "bh=%s;\r\n\tb=%s" % (
                        rnd.choice(DOMAINS),
                        base64.b64encode(rnd.randbytes(32)).decode(),
                        base64.b64encode(rnd.randbytes(256)).decode()))
    head.append("From: " + _person(rnd))
    head.append("To: " + ", ".join(_person(rnd)
                                   for _ in range(rnd.randrange(1, 4))))
    if rnd.random() < 0.3:
        head.append("Cc: " + _person(rnd))
    head.append("Subject: " + _encoded(subject))
    head.append("Date: " + _date(rnd))
    head.append("Message-ID: <webmail-%d.%08x@%s>" % (
        i, rnd.getrandbits(32), rnd.choice(DOMAINS)))
    if subject.startswith(("Re:", "AW:")):
        ref = "<webmail-%d@example.org>" % rnd.randrange(10 ** 6)
        head.append("In-Reply-To: " + ref)
        head.append("References: " + ref)
    if rnd.random() < 0.2:
        head.append("List-Id: <news.%s>" % rnd.choice(DOMAINS))
        head.append("List-Unsubscribe: <https://%s/u/%08x>" % (
            rnd.choice(DOMAINS), rnd.getrandbits(32)))
    head.append("MIME-Version: 1.0")
    target = max(2000, int(size * rnd.uniform(0.65, 1.5)))
    kind = rnd.random()
    if kind < 0.35:
        head.append("Content-Type: text/plain; charset=utf-8")
        head.append("Content-Transfer-Encoding: 8bit")
        body = _text(rnd, target)
    else:
        alt = "alt-%08x" % rnd.getrandbits(32)
        text_size = target // 2 if kind < 0.65 else target // 5
        text = _text(rnd, text_size // 2)
        html = "<html><body><p>%s</p></body></html>\r\n" % \
            _text(rnd, text_size // 2).replace("\r\n", "</p>\r\n<p>")
        alternative = (
            "--%s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n%s"
            "--%s\r\nContent-Type: text/html; charset=utf-8\r\n\r\n%s"
            "--%s--\r\n" % (alt, text, alt, html, alt))
        if kind < 0.65:
            head.append('Content-Type: multipart/alternative; '
                        'boundary="%s"' % alt)
            body = alternative
        else:
            mixed = "mix-%08x" % rnd.getrandbits(32)
            head.append('Content-Type: multipart/mixed; boundary="%s"'
                        % mixed)
            parts = ["--%s\r\nContent-Type: multipart/alternative; "
                     'boundary="%s"\r\n\r\n%s' % (mixed, alt, alternative)]
            left = target - text_size
            natt = rnd.choice([1, 1, 2])
            for a in range(natt):
                ctype, name = rnd.choice([
                    ("application/pdf", "report-%d.pdf"),
                    ("image/png", "photo-%d.png"),
                    ("image/jpeg", "IMG_%04d.jpg"),
                    ("text/csv", "export-%d.csv")])
                name = name % rnd.randrange(10000)
                parts.append(
                    '--%s\r\nContent-Type: %s; name="%s"\r\n'
                    'Content-Disposition: attachment; filename="%s"\r\n'
                    "Content-Transfer-Encoding: base64\r\n\r\n%s" % (
                        mixed, ctype, name, name, _b64(rnd, left // natt)))
            body = "".join(parts) + "--%s--\r\n" % mixed
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def messages(count, size, seed=18):
    """count messages, the same for every run; and how many of them
    SEARCH SUBJECT SEARCH_WORD finds."""
    rnd = random.Random(seed)
    msgs = [message(rnd, i, size) for i in range(count)]
    return msgs, sum(1 for i in range(count) if i % 20 == 7)


class Session:
    """One IMAP session: LOGIN (untimed), then commands timed one at a
    time. The reply is read as raw bytes until the tagged line; nothing
    is parsed while the clock runs."""

    def __init__(self, port, user, password, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.n = 0
        self.buf = bytearray()
        self._reply(None)
        status, _, _ = self.command('LOGIN "%s" "%s"' % (user, password))
        if status != "OK":
            raise RuntimeError("IMAP LOGIN %s: %s" % (user, status))

    def _recv(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("IMAP connection closed")
        self.buf += chunk

    def _reply(self, tag):
        """Everything up to and including the line that starts with tag
        (the greeting: tag None, the first line)."""
        buf, start = self.buf, 0
        while True:
            if tag is None or buf.startswith(tag):
                i = 0
            else:
                i = buf.find(b"\r\n" + tag, start)
                if i >= 0:
                    i += 2
            if i >= 0:
                j = buf.find(b"\r\n", i)
                if j >= 0:
                    out = bytes(buf[:j + 2])
                    del buf[:j + 2]
                    return out, out[i:]
            start = max(0, len(buf) - len(tag or b"") - 2)
            self._recv()

    def command(self, line):
        """(status, untagged reply bytes, seconds)"""
        self.n += 1
        tag = b"W%d " % self.n
        t = time.perf_counter()
        self.sock.sendall(tag + line.encode() + b"\r\n")
        reply, tagged = self._reply(tag)
        elapsed = time.perf_counter() - t
        status = tagged[len(tag):].split(b" ", 1)[0].decode()
        return status, reply[:len(reply) - len(tagged)], elapsed

    def close(self):
        try:
            self.command("LOGOUT")
        except (OSError, RuntimeError):
            pass
        self.sock.close()


def open_folder(port, user, password, timeout):
    """SELECT INBOX and the four commands of COMMANDS in one session:
    {name: seconds} with "total" (SELECT included, LOGIN not), and
    {name: reply bytes}."""
    s = Session(port, user, password, timeout)
    try:
        status, _, total = s.command("SELECT INBOX")
        if status != "OK":
            raise RuntimeError("%s: SELECT INBOX: %s" % (user, status))
        times, replies = {}, {}
        for name, _, cmd in COMMANDS:
            status, reply, times[name] = s.command(cmd)
            if status != "OK":
                raise RuntimeError("%s: %s: %s" % (user, cmd, status))
            replies[name] = reply
            total += times[name]
        times["total"] = total
        return times, replies
    finally:
        s.close()


# Dovecot's cache and popvault's encrypted one (docs/encryption.md)
CACHE_FILES = ("dovecot.index.cache", "dovecot.popvault.cache")


def cache_size(home):
    """Bytes in the cache files under a user's home."""
    total = 0
    for d, _, files in os.walk(home):
        total += sum(os.path.getsize(os.path.join(d, f))
                     for f in files if f in CACHE_FILES)
    return total


def normalized(replies, count, found):
    """The replies with UIDs made relative to the folder's first UID
    (users' INBOXes had different histories), after checking the counts:
    every message answered, SORT lists all, SEARCH finds found."""
    hdr = replies["hdr"]
    uids = [int(u) for u in re.findall(rb"^\* \d+ FETCH \(UID (\d+) ", hdr,
                                       re.M)]
    if len(uids) != count:
        raise RuntimeError("UID FETCH answered %d of %d messages" % (
            len(uids), count))
    base = min(uids) - 1
    env = replies["envbs"]
    n = len(re.findall(rb"^\* \d+ FETCH \(", env, re.M))
    if n != count or env.count(b"BODYSTRUCTURE") != count:
        raise RuntimeError("FETCH ENVELOPE BODYSTRUCTURE answered %d of %d"
                           % (n, count))
    m = re.search(rb"^\* SORT([ \d]*)\r\n", replies["sort"], re.M)
    order = [int(u) - base for u in m.group(1).split()] if m else []
    if sorted(order) != list(range(1, count + 1)):
        raise RuntimeError("UID SORT listed %d of %d messages" % (
            len(order), count))
    m = re.search(rb"^\* SEARCH([ \d]*)\r\n", replies["search"], re.M)
    hits = m.group(1).split() if m else []
    if len(hits) != found:
        raise RuntimeError("SEARCH SUBJECT %s found %d, not %d" % (
            SEARCH_WORD, len(hits), found))
    return {
        "hdr": re.sub(rb"^(\* \d+ FETCH \(UID )(\d+)",
                      lambda m: m.group(1) + b"%d" % (int(m.group(2)) - base),
                      hdr, flags=re.M),
        "envbs": env, "sort": order, "search": hits}

"""A small client for Marionette, the remote protocol built into
Thunderbird (started with --marionette). Messages are "length:json";
a command is [0, id, name, params], its answer [1, id, error, result].
Only what the Thunderbird tests use: a session, chrome context and
scripts (a script may return a Promise; Marionette awaits it)."""

import json
import socket
import time


class MarionetteError(Exception):
    def __init__(self, message, error=None):
        super().__init__(message)
        self.error = error


class Marionette:
    def __init__(self, port, timeout=120):
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout)
        self.buf = b""
        self.last_id = 0
        hello = self._read()
        if hello.get("marionetteProtocol") != 3:
            raise MarionetteError("unexpected greeting %r" % hello)
        # dialogs are the scripts' business: Marionette must not dismiss
        # them by itself (Marionette takes the capabilities unwrapped)
        self.call("WebDriver:NewSession", {
            "unhandledPromptBehavior": "ignore"})
        # privileged scripts (needs -remote-allow-system-access)
        self.call("Marionette:SetContext", {"value": "chrome"})
        # a fetch may take a while on a loaded machine (default 30 s)
        self.call("WebDriver:SetTimeouts", {"script": 120000})

    def _fill(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise MarionetteError("connection closed")
            self.buf += data

    def _read(self):
        while b":" not in self.buf:
            self._fill(len(self.buf) + 1)
        size, _ = self.buf.split(b":", 1)
        start = len(size) + 1
        self._fill(start + int(size))
        msg = json.loads(self.buf[start:start + int(size)])
        self.buf = self.buf[start + int(size):]
        return msg

    def call(self, name, params=None):
        self.last_id += 1
        data = json.dumps([0, self.last_id, name, params or {}]).encode()
        self.sock.sendall(b"%d:%s" % (len(data), data))
        while True:
            msg = self._read()
            if msg[0] == 1 and msg[1] == self.last_id:
                if msg[2]:
                    raise MarionetteError("%s: %s" % (
                        name, msg[2].get("message", msg[2])),
                        msg[2].get("error"))
                return msg[3]

    def script(self, source, *args, prompt_timeout=60):
        """Runs source as a function body in chrome; returns its value
        (a returned Promise is awaited).

        While a modal dialog is open Marionette refuses every script with
        "unexpected alert open" before running it (WebDriver's prompt
        handling comes first), so the call is sent again until the test's
        dialog observer has answered the dialog; a dialog still open after
        prompt_timeout seconds is the error."""
        deadline = time.time() + prompt_timeout
        while True:
            try:
                return self.call("WebDriver:ExecuteScript", {
                    "script": source, "args": list(args)})["value"]
            except MarionetteError as e:
                if e.error != "unexpected alert open" or \
                        time.time() > deadline:
                    raise
            time.sleep(0.1)

    def close(self):
        self.sock.close()

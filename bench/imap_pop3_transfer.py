#!/usr/bin/env python3
"""A large IMAP FETCH and POP3 RETR, directly from Dovecot and through relaygate, same run.

Starts a Dovecot (tests/dovecot.py's fixture: passwd-file user, maildir in a temp dir,
127.0.0.1 ports) holding one message of SIZE MiB, and ``twistd relaygate`` with IMAP and POP3
listeners routed to it; then fetches the message with imaplib and poplib, directly and through
the gateway (each twice; the second run counts), checks the bytes are identical, and reports
seconds, MiB/s and relaygate's peak RSS growth (VmHWM) during the transfers.

Usage (from the repository root): bench/imap_pop3_transfer.py --twistd .venv/bin/twistd
    [--size-mib 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import poplib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loopback import free_port, memory_kib, reset_peak, wait_for_port

from tests.dovecot import Dovecot  # importable once the repository root is on the path

USER, PASSWORD = "alice@example.org", "secret"

CONFIG = """\
[server]
name = "gw.test"
[[listen]]
protocol = "imap"
address = "127.0.0.1:{imap}"
[[listen]]
protocol = "pop3"
address = "127.0.0.1:{pop3}"
[[route]]
protocol = "imap"
match = "*"
backends = ["127.0.0.1:{dovecot_imap}"]
[[route]]
protocol = "pop3"
match = "*"
backends = ["127.0.0.1:{dovecot_pop3}"]
"""


def fetch_imap(port: int) -> tuple[bytes, float]:
    """Log in, select INBOX and FETCH message 1 whole; the body and the FETCH's seconds."""
    client = imaplib.IMAP4("127.0.0.1", port)
    client.login(USER, PASSWORD)
    client.select("INBOX", readonly=True)
    started = time.monotonic()
    status, data = client.fetch("1", "(BODY.PEEK[])")
    seconds = time.monotonic() - started
    client.logout()
    assert status == "OK", status
    item = data[0]
    assert isinstance(item, tuple)
    return item[1], seconds


def retr_pop3(port: int) -> tuple[bytes, float]:
    """USER/PASS and RETR 1; the message (CRLF lines) and the RETR's seconds."""
    client = poplib.POP3("127.0.0.1", port)
    client.user(USER)
    client.pass_(PASSWORD)
    started = time.monotonic()
    _, lines, _ = client.retr(1)
    seconds = time.monotonic() - started
    client.quit()
    return b"\r\n".join(lines), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twistd", required=True)
    parser.add_argument("--size-mib", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    poplib._MAXLINE = 1 << 20  # the message has 1000-byte lines; the default is 2048
    size = args.size_mib << 20
    line = b"x" * 998 + b"\r\n"
    message = b"Subject: big\r\n\r\n" + line * (size // len(line))
    dovecot = Dovecot.start({USER: PASSWORD})
    tmp = tempfile.mkdtemp(prefix="relaygate-transfer-")
    gateway = None
    try:
        dovecot.deliver(USER, message)
        imap, pop3 = free_port(), free_port()
        config = os.path.join(tmp, "relaygate.toml")
        with open(config, "w") as f:
            f.write(
                CONFIG.format(
                    imap=imap,
                    pop3=pop3,
                    dovecot_imap=dovecot.imap_port,
                    dovecot_pop3=dovecot.pop3_port,
                )
            )
        gateway = subprocess.Popen(
            [
                args.twistd,
                "-n",
                "--pidfile=",
                "--logfile",
                os.path.join(tmp, "rg.log"),
                "relaygate",
                "-c",
                config,
            ]
        )
        wait_for_port(imap)
        wait_for_port(pop3)
        before = memory_kib(gateway.pid)["VmRSS"]
        reset_peak(gateway.pid)
        results: dict[str, object] = {"message_mib": args.size_mib}
        for name, run, direct_port, gateway_port in (
            ("imap_fetch", fetch_imap, dovecot.imap_port, imap),
            ("pop3_retr", retr_pop3, dovecot.pop3_port, pop3),
        ):
            for label, port in (("direct", direct_port), ("relaygate", gateway_port)):
                run(port)  # warm the caches; the second run counts
                body, seconds = run(port)
                if label == "direct":
                    reference = body
                elif body != reference:
                    raise SystemExit(f"{name}: relaygate delivered different bytes")
                results[f"{name}_{label}_seconds"] = round(seconds, 3)
                results[f"{name}_{label}_mib_per_s"] = round(len(body) / seconds / 2**20, 1)
        results["relaygate_rss_before_kib"] = before
        results["relaygate_rss_peak_growth_kib"] = memory_kib(gateway.pid)["VmHWM"] - before
        print(json.dumps(results, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        return 0
    finally:
        if gateway is not None:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(10)
        dovecot.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

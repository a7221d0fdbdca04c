#!/usr/bin/env python3
"""Memory of a relaygate process: RSS with many idle sessions, and while relaying a big message.

Starts Postfix's smtp-sink and ``twistd relaygate`` (routing every recipient to the sink) on
free 127.0.0.1 ports, then:

1. opens N sessions that each say EHLO and then sit idle, and reads relaygate's RSS;
2. closes them, sends one message of SIZE MiB through the gateway, and reads the peak RSS
   (VmHWM) against the RSS before the message.

Usage: bench/memory.py --twistd .venv/bin/twistd [--idle 1000] [--size-mib 50] [--json FILE]
Only the standard library; everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from loopback import free_port, memory_kib, reset_peak, wait_for_port

CONFIG = """\
[server]
name = "gw.test"
idle_timeout = 600.0
[[listen]]
protocol = "smtp"
address = "127.0.0.1:{port}"
[[route]]
match = "*"
backends = ["127.0.0.1:{sink}"]
[smtp]
xclient = false
max_message_size = {max_size}
"""


def read_reply(sock: socket.socket) -> bytes:
    """Read one (possibly multi-line) SMTP reply."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and any(len(line) > 3 and line[3:4] == b" " for line in lines[:-1]):
            return data


def idle_sessions(port: int, count: int) -> list[socket.socket]:
    """COUNT sessions that got the greeting and an EHLO reply, then stay open."""
    sessions = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        read_reply(s)
        s.sendall(b"EHLO idle.test\r\n")
        read_reply(s)
        sessions.append(s)
    return sessions


def send_big(port: int, size: int) -> bytes:
    """Send one SIZE-byte message and return the reply to its final dot."""
    line = b"x" * 998 + b"\r\n"
    s = socket.create_connection(("127.0.0.1", port))
    read_reply(s)
    s.sendall(b"EHLO big.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@gw.test>\r\nDATA\r\n")
    replies = b""
    while replies.count(b"\r\n") < 4 or b"354" not in replies:
        replies += read_reply(s)
    sent = 0
    block = line * 64
    while sent < size:
        s.sendall(block)
        sent += len(block)
    s.sendall(b".\r\n")
    final = read_reply(s)
    s.sendall(b"QUIT\r\n")
    s.close()
    return final.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twistd", required=True)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--size-mib", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    tmp = tempfile.mkdtemp(prefix="relaygate-mem-")
    port, sink = free_port(), free_port()
    config = os.path.join(tmp, "relaygate.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(port=port, sink=sink, max_size=(args.size_mib + 1) << 20))
    user = ["-u", "nobody"] if os.getuid() == 0 else []
    procs = [
        subprocess.Popen([sink_bin, *user, f"127.0.0.1:{sink}", "256"]),
        subprocess.Popen(
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
        ),
    ]
    try:
        wait_for_port(sink)
        wait_for_port(port)
        pid = procs[1].pid
        base = memory_kib(pid)["VmRSS"]
        sessions = idle_sessions(port, args.idle)
        idle = memory_kib(pid)["VmRSS"]
        for s in sessions:
            s.close()
        # Let the gateway notice the closes before measuring the next case.
        select.select([], [], [], 1.0)
        before = memory_kib(pid)["VmRSS"]
        reset_peak(pid)
        started = time.monotonic()
        final = send_big(port, args.size_mib << 20)
        seconds = time.monotonic() - started
        peak = memory_kib(pid)["VmHWM"]
        result = {
            "rss_start_kib": base,
            "idle_sessions": args.idle,
            "rss_idle_kib": idle,
            "kib_per_idle_session": round((idle - base) / max(args.idle, 1), 1),
            "message_mib": args.size_mib,
            "rss_before_message_kib": before,
            "rss_peak_during_message_kib": peak,
            "rss_growth_kib": peak - before,
            "message_seconds": round(seconds, 3),
            "final_reply": final.decode("ascii", "replace"),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0 if final.startswith(b"250") else 1
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

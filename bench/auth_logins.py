#!/usr/bin/env python3
"""AUTH logins per second through nginx's mail proxy and through relaygate, in one run.

Both proxies get the same job: `smtp_auth plain` (`[smtp] auth = ["plain"]`) in front of one
smtp-sink backend, checked by the same auth_http endpoint. The endpoint is a separate nginx
(`http {}` only, keep-alive on), so neither proxy is billed for it: nginx's mail module opens a
new HTTP/1.0 connection per login, relaygate keeps its connections to the endpoint alive.

Each session: connect, greeting, EHLO, AUTH PLAIN with an initial response, then either QUIT
(`--mode login`) or one small message (`--mode message`, the default: both proxies then also
open their backend connection, which nginx does after every login anyway). N sessions run at
concurrency C from an asyncio client in this process. The script reports sessions per second
and the CPU time (user+sys) the proxy's process tree spent per session.

Standard library only. Needs nginx with the mail module (Debian: nginx libnginx-mod-mail),
Postfix's smtp-sink, and a twistd with the relaygate plugin (this checkout's .venv/bin/twistd by
default). Example:

    python3 bench/auth_logins.py --sessions 5000 --concurrency 1 10 50
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from loopback import free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
USER, PASSWORD = "alice@example.org", "s3cret"
HERE = os.path.dirname(os.path.abspath(__file__))


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Wait until something accepts on C{port} (a benchmark may poll; tests may not)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user+sys) of C{pid} and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        todo.extend(children.get(current, []))
    return total


NGINX_AUTH = """
load_module {module};
worker_processes 1;
error_log {dir}/auth-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port {sink};
            return 204;
        }}
    }}
}}
"""

NGINX_MAIL = """
load_module {module};
worker_processes {workers};
error_log {dir}/mail-error.log warn;
events {{ worker_connections 4096; }}
mail {{
    server_name gw.test;
    auth_http 127.0.0.1:{auth}/auth;
    server {{
        listen 127.0.0.1:{port};
        protocol smtp;
        smtp_auth plain;
        xclient off;
        proxy on;
    }}
}}
"""

RELAYGATE = """
[server]
name = "gw.test"

[[listen]]
protocol = "smtp"
address = "127.0.0.1:{port}"

[auth]
http = "http://127.0.0.1:{auth}/auth"

[smtp]
auth = ["plain"]
backend_auth = "none"
xclient = false
"""


@contextlib.contextmanager
def started(args: list[str], what: str, port: int, log: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, process, what)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """Read one (possibly multi-line) SMTP reply; return its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def session(port: int, mode: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _expect(reader, b"220")
        writer.write(b"EHLO client.test\r\n")
        await _expect(reader, b"250")
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        writer.write(b"AUTH PLAIN " + token + b"\r\n")
        await _expect(reader, b"235")
        if mode == "message":
            writer.write(b"MAIL FROM:<" + USER.encode() + b">\r\n")
            await _expect(reader, b"250")
            writer.write(b"RCPT TO:<bob@example.net>\r\n")
            await _expect(reader, b"250")
            writer.write(b"DATA\r\n")
            await _expect(reader, b"354")
            writer.write(b"Subject: bench\r\n\r\nhello\r\n.\r\n")
            await _expect(reader, b"250")
        writer.write(b"QUIT\r\n")
        await _expect(reader, b"221")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _expect(reader: asyncio.StreamReader, code: bytes) -> None:
    line = await _reply(reader)
    if not line.startswith(code):
        raise RuntimeError(f"expected {code.decode()}, got {line!r}")


async def drive(port: int, sessions: int, concurrency: int, mode: str) -> float:
    """Run C{sessions} sessions, C{concurrency} at a time; return the wall time."""
    remaining = sessions
    failures: list[BaseException] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                await session(port, mode)
            except Exception as e:
                failures.append(e)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    if failures:
        raise SystemExit(f"{len(failures)} sessions failed, first: {failures[0]!r}")
    return elapsed


def measure(pid: int, port: int, sessions: int, concurrency: int, mode: str) -> dict[str, float]:
    asyncio.run(drive(port, min(200, sessions), concurrency, mode))  # warm-up
    cpu = tree_cpu(pid)
    elapsed = asyncio.run(drive(port, sessions, concurrency, mode))
    used = tree_cpu(pid) - cpu
    return {
        "sessions_per_s": sessions / elapsed,
        "cpu_ms_per_session": 1000 * used / sessions,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--mode", choices=("login", "message", "both"), default="both")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--nginx-module", default="/usr/lib/nginx/modules/ngx_mail_module.so")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument(
        "--twistd", default=os.path.join(os.path.dirname(HERE), ".venv", "bin", "twistd")
    )
    parser.add_argument("--smtp-sink", default=shutil.which("smtp-sink") or "/usr/sbin/smtp-sink")
    parser.add_argument("--json", help="write the results here as JSON")
    options = parser.parse_args()
    modes = ["login", "message"] if options.mode == "both" else [options.mode]

    directory = tempfile.mkdtemp(prefix="auth-logins-")
    sink, auth, nginx_port, relay_port = (free_port() for _ in range(4))
    module = f"{options.nginx_module}" if os.path.exists(options.nginx_module) else ""
    if not module:
        raise SystemExit(f"no nginx mail module at {options.nginx_module}")
    for name, text in (
        ("auth.conf", NGINX_AUTH.format(module=module, dir=directory, port=auth, sink=sink)),
        (
            "mail.conf",
            NGINX_MAIL.format(
                module=module,
                dir=directory,
                port=nginx_port,
                auth=auth,
                workers=options.nginx_workers,
            ),
        ),
        ("relaygate.toml", RELAYGATE.format(port=relay_port, auth=auth)),
    ):
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)

    def nginx_args(conf: str) -> list[str]:
        pid = os.path.join(directory, conf + ".pid")
        return [
            options.nginx,
            "-p",
            directory,
            "-c",
            os.path.join(directory, conf),
            "-g",
            f"daemon off; pid {pid};",
        ]

    sink_args = [options.smtp_sink, "-u", "nobody", f"127.0.0.1:{sink}", "1024"]
    relay_args = [
        options.twistd,
        "-n",
        "--pidfile=",
        "--logfile",
        os.path.join(directory, "relaygate.log"),
        "relaygate",
        "-c",
        os.path.join(directory, "relaygate.toml"),
    ]
    results: dict[str, dict[str, dict[str, float]]] = {}
    with (
        started(sink_args, "smtp-sink", sink, os.path.join(directory, "sink.out")),
        started(nginx_args("auth.conf"), "auth nginx", auth, os.path.join(directory, "a.out")),
        started(
            nginx_args("mail.conf"), "mail nginx", nginx_port, os.path.join(directory, "m.out")
        ) as nginx,
        started(relay_args, "relaygate", relay_port, os.path.join(directory, "r.out")) as relay,
    ):
        for mode in modes:
            for concurrency in options.concurrency:
                for target, process, port in (
                    ("nginx", nginx, nginx_port),
                    ("relaygate", relay, relay_port),
                ):
                    key = f"{mode} c={concurrency}"
                    result = measure(process.pid, port, options.sessions, concurrency, mode)
                    results.setdefault(key, {})[target] = result
                    print(
                        f"{key:<16} {target:<10} {result['sessions_per_s']:8.0f} sessions/s"
                        f"  {result['cpu_ms_per_session']:6.3f} ms CPU/session",
                        flush=True,
                    )
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"sessions": options.sessions, "results": results}, f, indent=2)
    shutil.rmtree(directory, ignore_errors=True)
    sys.stdout.write("done\n")


if __name__ == "__main__":
    main()

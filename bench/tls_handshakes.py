#!/usr/bin/env python3
"""Measure what a TLS session costs the front door: relaygate against nginx's mail proxy.

../shared/bench/run drives plaintext smtp-source load only, so this script measures the TLS
handshake itself. For each target (relaygate under twistd, nginx with its mail module) and each
listener mode (plain, implicit TLS, STARTTLS) it opens N SMTP sessions from C concurrent client
threads. A session connects, handshakes (implicit: at once, STARTTLS: after EHLO), reads the
greeting, sends EHLO and QUIT; no message and no backend are involved. It reports sessions per
second and the server's CPU time per session (user+sys of its whole process tree, from the
per-thread schedstat clocks); TLS minus plain is the handshake's cost.

Standard library only; certificates (EC P-256, like most ACME certificates) come from the
openssl command. Usage, from the project root:

    bench/tls_handshakes.py --twistd .venv/bin/twistd --sessions 2000 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from loopback import free_port

MODES = ("plain", "implicit", "starttls")


def make_certificates(directory: str) -> tuple[str, str, str]:
    """A CA and a server certificate for localhost/127.0.0.1; paths of ca, cert, key."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    run("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=bench CA", "-days", "2",
        "-out", "ca.crt")  # fmt: skip
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key")
    run("req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr")
    with open(os.path.join(directory, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")  # fmt: skip
    return tuple(os.path.join(directory, n) for n in ("ca.crt", "server.crt", "server.key"))  # type: ignore[return-value]


def process_tree_cpu(root: int) -> float:
    """Seconds on CPU of C{root} and its descendants (every thread), from schedstat."""
    total = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pending.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            continue
    return total / 1e9


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def read_reply(stream: socket.socket, buffer: bytearray) -> bytes:
    """Read one (possibly multi-line) SMTP reply."""
    while True:
        while b"\r\n" not in buffer:
            data = stream.recv(4096)
            if not data:
                raise ConnectionError("closed")
            buffer += data
        line, _, rest = bytes(buffer).partition(b"\r\n")
        buffer[:] = rest
        if line[3:4] != b"-":
            return line


def session(port: int, mode: str, context: ssl.SSLContext) -> None:
    """One SMTP session: connect, TLS as the mode says, greeting, EHLO, QUIT."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    stream: socket.socket = raw
    buffer = bytearray()
    try:
        if mode == "implicit":
            stream = context.wrap_socket(raw, server_hostname="localhost")
        if not read_reply(stream, buffer).startswith(b"220"):
            raise RuntimeError("no greeting")
        stream.sendall(b"EHLO bench.test\r\n")
        read_reply(stream, buffer)
        if mode == "starttls":
            stream.sendall(b"STARTTLS\r\n")
            if not read_reply(stream, buffer).startswith(b"220"):
                raise RuntimeError("STARTTLS refused")
            stream = context.wrap_socket(raw, server_hostname="localhost")
            stream.sendall(b"EHLO bench.test\r\n")
            read_reply(stream, buffer)
        stream.sendall(b"QUIT\r\n")
        read_reply(stream, buffer)
    finally:
        stream.close()


def drive(port: int, mode: str, context: ssl.SSLContext, sessions: int, threads: int) -> float:
    """Run C{sessions} sessions from C{threads} threads; the wall time."""
    left = [sessions]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if left[0] == 0 or errors:
                    return
                left[0] -= 1
            try:
                session(port, mode, context)
            except BaseException as e:
                errors.append(e)
                return

    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise SystemExit(f"{mode}: {errors[0]!r}")
    return time.monotonic() - started


def relaygate_server(
    twistd: str, directory: str, ports: dict[str, int], cert: str, key: str
) -> subprocess.Popen[bytes]:
    listens = "".join(
        f'[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:{ports[m]}"\n'
        f'tls = "{"none" if m == "plain" else m}"\n'
        for m in MODES
    )
    config = (
        f'[server]\nname = "gw.test"\n{listens}'
        f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
        '[[route]]\nmatch = "*"\nbackends = ["127.0.0.1:9"]\n[smtp]\nxclient = false\n'
    )
    path = os.path.join(directory, "relaygate.toml")
    with open(path, "w") as f:
        f.write(config)
    log = open(os.path.join(directory, "relaygate.log"), "wb")
    return subprocess.Popen(
        [twistd, "-n", "--pidfile=", "--logfile=/dev/null", "relaygate", "-c", path],
        stdout=log,
        stderr=log,
    )


def nginx_server(
    nginx: str, directory: str, ports: dict[str, int], cert: str, key: str
) -> subprocess.Popen[bytes]:
    auth_port = free_port()
    config = f"""
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes 1;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{auth_port};
        location /auth {{
            add_header Auth-Status OK; add_header Auth-Server 127.0.0.1; add_header Auth-Port 9;
            return 204;
        }}
    }}
}}
mail {{
    auth_http 127.0.0.1:{auth_port}/auth;
    server_name gw.test;
    xclient off;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    server {{ listen 127.0.0.1:{ports["plain"]}; protocol smtp; smtp_auth none; }}
    server {{ listen 127.0.0.1:{ports["implicit"]} ssl; protocol smtp; smtp_auth none; }}
    server {{ listen 127.0.0.1:{ports["starttls"]}; protocol smtp; smtp_auth none;
             starttls on; }}
}}
"""
    path = os.path.join(directory, "nginx.conf")
    with open(path, "w") as f:
        f.write(config)
    return subprocess.Popen(
        [nginx, "-p", directory, "-c", path, "-g", f"daemon off; pid {directory}/nginx.pid;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def measure(
    name: str,
    start: Callable[[dict[str, int]], subprocess.Popen[bytes]],
    context: ssl.SSLContext,
    sessions: int,
    threads: int,
) -> list[dict[str, object]]:
    ports = {m: free_port() for m in MODES}
    server = start(ports)
    rows: list[dict[str, object]] = []
    try:
        for mode in MODES:
            wait_for_port(ports[mode], server)
            drive(ports[mode], mode, context, min(200, sessions), threads)  # warm-up
            before = process_tree_cpu(server.pid)
            wall = drive(ports[mode], mode, context, sessions, threads)
            cpu = process_tree_cpu(server.pid) - before
            rows.append(
                {
                    "target": name,
                    "mode": mode,
                    "sessions": sessions,
                    "sessions_per_s": round(sessions / wall, 1),
                    "cpu_ms_per_session": round(cpu * 1000 / sessions, 3),
                }
            )
    finally:
        server.terminate()
        server.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twistd", default=".venv/bin/twistd")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--targets", default="relaygate,nginx")
    parser.add_argument("--json", help="also write the rows to this file")
    options = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="tls-bench-")
    ca, cert, key = make_certificates(directory)
    context = ssl.create_default_context(cafile=ca)
    starters: dict[str, Callable[[dict[str, int]], subprocess.Popen[bytes]]] = {
        "relaygate": lambda p: relaygate_server(options.twistd, directory, p, cert, key),
        "nginx": lambda p: nginx_server(options.nginx, directory, p, cert, key),
    }
    rows = []
    for name in options.targets.split(","):
        rows += measure(name, starters[name], context, options.sessions, options.concurrency)
    plain = {r["target"]: r["cpu_ms_per_session"] for r in rows if r["mode"] == "plain"}
    print(
        f"{'target':10} {'mode':9} {'sessions/s':>10} {'CPU ms/session':>15} {'TLS extra ms':>13}"
    )
    for r in rows:
        extra = float(r["cpu_ms_per_session"]) - float(plain[r["target"]])  # type: ignore[arg-type]
        extra_text = "-" if r["mode"] == "plain" else f"{extra:.3f}"
        print(
            f"{r['target']:10} {r['mode']:9} {r['sessions_per_s']:>10} "
            f"{r['cpu_ms_per_session']:>15} {extra_text:>13}"
        )
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"settings": vars(options), "rows": rows}, f, indent=2)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

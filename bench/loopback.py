"""What the bench scripts share: loopback ports and a process's memory from /proc.

Imported by the scripts in this directory (Python puts a script's own directory on the path).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time


def free_port() -> int:
    """A 127.0.0.1 port that was free a moment ago (bench only: the race is harmless here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts on 127.0.0.1:PORT."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of PID, in KiB."""
    result = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                result[key] = int(value.split()[0])
    return result


def reset_peak(pid: int) -> None:
    """Reset PID's VmHWM to its current RSS (Linux 4.0+: write 5 to clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes written to SOCK that the peer has not yet acknowledged (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def unread_bytes(local_port: int, remote_port: int) -> int:
    """The receive queue of the 127.0.0.1 TCP socket LOCAL_PORT <-> REMOTE_PORT (/proc/net/tcp).

    What the kernel holds that the socket's owner has not read yet.
    """
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
            if int(local, 16) == local_port and int(remote, 16) == remote_port:
                return int(fields[4].split(":")[1], 16)
    raise LookupError(f"no socket 127.0.0.1:{local_port} <-> {remote_port}")

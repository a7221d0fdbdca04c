"""What the bench scripts share: loopback ports and a process's memory from /proc.

Imported by the scripts in this directory (Python puts a script's own directory on the path).
"""

from __future__ import annotations

import socket
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

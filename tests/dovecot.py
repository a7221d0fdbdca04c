"""A real Dovecot (imapd + pop3d) for integration tests, in a temp dir on free loopback ports.

One runs per test class (it starts in a fraction of a second); a test gets it with::

    dovecot = await dovecot_for(self, {"alice@example.org": "secret"})

With C{ssl="yes"} or C{"required"} and a certificate (L{tests.certs}), it also offers STARTTLS/STLS
and listens for implicit TLS (C{imaps_port}, C{pop3s_port}); by default it speaks plaintext only.

Dovecot runs in the foreground and logs to its stderr, which a thread reads line by line, so
tests can wait for a log line (L{Dovecot.wait_for_log}) instead of sleeping. The process is
not owned by the reactor: trial's reactor checks between tests would see its pipes otherwise.

Ports: Dovecot cannot pick its own port and report it, so L{free_ports} binds 127.0.0.1:0 and
releases it; another process could take the port in between. Dovecot then fails with its own
"Address already in use" error rather than hanging, and L{Dovecot.start} tries again with new
ports (a few times).
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

DOVECOT = shutil.which("dovecot", path=os.environ.get("PATH", "") + ":/usr/sbin")

_CONFIG = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = /dev/stderr
info_log_path = /dev/stderr
ssl = {ssl}
{ssl_files}listen = 127.0.0.1
protocols = imap pop3
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
login_trusted_networks = 127.0.0.0/8
imap_id_log = *
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
  }}
}}
service anvil {{
  chroot =
}}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (see the module docstring)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """C{count} distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All sockets are held open until every port is known, so the kernel cannot hand the same
    port out twice (Dovecot refuses a config with a duplicate listener).
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


_START_ATTEMPTS = 3


class DovecotError(Exception):
    """Dovecot did not start, or a log line did not come."""


class Dovecot:
    """One running Dovecot; see the module docstring."""

    def __init__(
        self,
        directory: str,
        users: Mapping[str, str],
        ssl: str = "no",
        certificate: str = "",
        key: str = "",
    ) -> None:
        self.directory = directory
        self.users = dict(users)
        self.ssl = ssl
        self._certificate = certificate
        self._key = key
        ports = free_ports(4)
        self.imap_port, self.pop3_port = ports[0], ports[1]
        # 0 turns Dovecot's implicit-TLS listeners off.
        self.imaps_port = ports[2] if ssl != "no" else 0
        self.pop3s_port = ports[3] if ssl != "no" else 0
        self.log: list[str] = []
        self._changed = threading.Condition()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        nobody = pwd.getpwnam("nobody")
        self._uid, self._gid = nobody.pw_uid, nobody.pw_gid

    @classmethod
    def start(
        cls,
        users: Mapping[str, str],
        timeout: float = 30.0,
        ssl: str = "no",
        certificate: str = "",
        key: str = "",
    ) -> Dovecot:
        """Write the config, start Dovecot and return once it listens (blocking).

        @param ssl: Dovecot's C{ssl} setting: C{no}, C{yes} or C{required}; the last two need
            C{certificate} (a PEM chain) and C{key}.
        """
        if DOVECOT is None:
            raise DovecotError(
                "dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)"
            )
        for attempt in range(_START_ATTEMPTS):
            directory = tempfile.mkdtemp(prefix="relaygate-dovecot-")
            # Dovecot's auth process runs as "dovecot" and must reach the passwd file.
            os.chmod(directory, 0o711)
            dovecot = cls(directory, users, ssl, certificate, key)
            dovecot._write_files()
            dovecot._spawn()
            try:
                dovecot.wait_for_log("starting up", timeout)
            except DovecotError:
                dovecot.stop()
                # Another process took one of the ports free_ports found (see the module
                # docstring): try again with new ones.
                if attempt + 1 < _START_ATTEMPTS and any(
                    "Address already in use" in line for line in dovecot.log
                ):
                    continue
                raise
            except BaseException:
                dovecot.stop()
                raise
            return dovecot
        raise AssertionError("unreachable")

    def _write_files(self) -> None:
        with open(os.path.join(self.directory, "dovecot.conf"), "w") as f:
            f.write(
                _CONFIG.format(
                    dir=self.directory,
                    uid=self._uid,
                    gid=self._gid,
                    imap_port=self.imap_port,
                    pop3_port=self.pop3_port,
                    imaps_port=self.imaps_port,
                    pop3s_port=self.pop3s_port,
                    ssl=self.ssl,
                    ssl_files=(
                        f"ssl_cert = <{self._certificate}\nssl_key = <{self._key}\n"
                        if self.ssl != "no"
                        else ""
                    ),
                )
            )
        passwd = os.path.join(self.directory, "passwd")
        with open(passwd, "w", encoding="utf-8") as f:
            for user, password in self.users.items():
                if ":" in password or "\n" in password:
                    raise ValueError("passwd-file passwords can't hold ':' or line breaks")
                f.write(f"{user}:{{PLAIN}}{password}\n")
        os.chmod(passwd, 0o644)
        home = os.path.join(self.directory, "home")
        os.mkdir(home)
        os.chown(home, self._uid, self._gid)

    def _spawn(self) -> None:
        assert DOVECOT is not None
        self._process = subprocess.Popen(
            [DOVECOT, "-F", "-c", os.path.join(self.directory, "dovecot.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, name="dovecot-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for raw in self._process.stderr:
            with self._changed:
                self.log.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.log.append("<dovecot exited>")
            self._changed.notify_all()

    def wait_for_log(self, needle: str, timeout: float = 30.0, start: int = 0) -> str:
        """Block until a log line (from index C{start}) contains C{needle}; return it.

        Call it through C{deferToThread} from a test running on the reactor.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.log[start:]:
                    if needle in line:
                        return line
                    if "Fatal" in line or line == "<dovecot exited>":
                        raise DovecotError(f"dovecot failed: {line}")
                start = len(self.log)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DovecotError(f"no log line with {needle!r} in {timeout}s")
                self._changed.wait(remaining)

    def deliver(self, user: str, message: bytes, name: str = "1.test") -> None:
        """Put C{message} in C{user}'s INBOX as a new maildir file owned by the mail user."""
        maildir = os.path.join(self.directory, "home", user, "Maildir")
        for sub in ("", "new", "cur", "tmp"):
            path = os.path.join(maildir, sub)
            os.makedirs(path, exist_ok=True)
            os.chown(path, self._uid, self._gid)
        for parent in (os.path.join(self.directory, "home", user),):
            os.chown(parent, self._uid, self._gid)
        path = os.path.join(maildir, "new", name)
        with open(path, "wb") as f:
            f.write(message)
        os.chown(path, self._uid, self._gid)

    def stop(self) -> None:
        """Stop Dovecot (SIGTERM to its master by pid), wait for it, remove the temp dir."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)


_RUNNING: dict[type, Dovecot] = {}


def _stop_all() -> None:
    for dovecot in _RUNNING.values():
        dovecot.stop()
    _RUNNING.clear()


atexit.register(_stop_all)


async def dovecot_for(
    case: TestCase,
    users: Mapping[str, str],
    prepare: Callable[[Dovecot], None] | None = None,
    ssl: str = "no",
    certificate: str = "",
    key: str = "",
) -> Dovecot:
    """The Dovecot of C{case}'s test class, started (and C{prepare}d) by its first test.

    trial has no C{setUpClass}, so the class's first test starts it in a thread and every
    later test of the class reuses it; all of them are stopped when the test run exits.
    C{ssl}, C{certificate} and C{key} as in L{Dovecot.start}.
    """
    cls = type(case)
    if cls not in _RUNNING:
        dovecot = await deferToThread(Dovecot.start, users, 30.0, ssl, certificate, key)
        _RUNNING[cls] = dovecot
        if prepare is not None:
            await deferToThread(prepare, dovecot)
    return _RUNNING[cls]

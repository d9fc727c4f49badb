"""A throwaway OpenSSH server on 127.0.0.1 and a throwaway local user to log in as.

Each test gets its own sshd (own host key, own free port, own temp dir) and its own user with a random name and
password, so tests can restart or kill their server and change their user freely, and pytest-xdist workers never
share anything. Needs root (useradd, sudoers.d, sshd) and openssh-server + sudo:
`apt-get install -y openssh-server sudo`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from labctl.state import LabState

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the SSH integration tests run as root (they add a throwaway user and sudo rules)"
    for tool in (str(SSHD), "ssh-keygen", "useradd", "userdel", "chpasswd", "sudo", "visudo", "timeout"):
        if not shutil.which(tool):
            return f"{tool} is missing: apt-get install -y openssh-server sudo"
    return None


@pytest.fixture(scope="session", autouse=True)
def _requirements():
    reason = _missing()
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"integration tests cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (sshd forks one per connection, and that one forks the session)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class SSHServer:
    """`sshd -D` on 127.0.0.1:<port>, logging to `log`. `start()` may be called again after `stop()`/`kill()`."""

    def __init__(self, root: Path, user: str):
        self.root = root
        self.user = user
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self.new_host_key()

    def new_host_key(self) -> None:
        key = self.root / "host_ed25519"
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)

    def _config(self) -> Path:
        sftp = SFTP_SERVER if SFTP_SERVER.exists() else "internal-sftp"
        config = self.root / "sshd_config"
        config.write_text(
            f"ListenAddress {self.host}\nPort {self.port}\nHostKey {self.root / 'host_ed25519'}\n"
            f"PidFile {self.root / 'sshd.pid'}\nUsePAM no\nStrictModes no\nPasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nAuthorizedKeysFile .ssh/authorized_keys\n"
            f"PermitRootLogin no\nAllowUsers {self.user}\nLogLevel VERBOSE\nSubsystem sftp {sftp}\n"
        )
        return config

    def start(self, timeout: float = 10) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        config = self._config()
        self.proc = subprocess.Popen([str(SSHD), "-D", "-f", str(config), "-E", str(self.log)])
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not listen on {self.port}: {self.log_text()[-2000:]}") from None
                time.sleep(0.02)  # polling a port: there is nothing to wait on

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the listener and every connection it forked (the node 'dies' for its clients)."""
        if self.proc is None:
            return
        _kill([self.proc.pid, *_descendants(self.proc.pid)], sig)
        self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class LocalUser:
    """A throwaway login user with a random name and password; `sudo` is None, "nopasswd" or "password"."""

    def __init__(self, sudo: str | None = None):
        self.name = f"lt{os.getpid() % 10000}{secrets.token_hex(4)}"
        self.password = "pw-" + secrets.token_urlsafe(18)
        self.sudoers = Path(f"/etc/sudoers.d/labctl-test-{self.name}")
        _retry(["useradd", "--create-home", "--shell", "/bin/bash", self.name])
        self.home = Path(f"/home/{self.name}")
        self.uid = pwd.getpwnam(self.name).pw_uid
        self.set_password(self.password)
        if sudo:
            self.set_sudo(sudo)

    def set_password(self, password: str) -> None:
        _retry(["chpasswd"], input=f"{self.name}:{password}\n")

    def set_sudo(self, how: str) -> None:
        rule = f"{self.name} ALL=(ALL) {'NOPASSWD: ' if how == 'nopasswd' else ''}ALL\n"
        tmp = self.sudoers.with_name(self.sudoers.name + ".new")  # sudo ignores names containing a dot
        tmp.write_text(rule)
        tmp.chmod(0o440)
        subprocess.run(["visudo", "-cqf", str(tmp)], check=True)
        tmp.replace(self.sudoers)

    def remove(self) -> None:
        self.sudoers.unlink(missing_ok=True)
        _kill(_pids_of(self.uid), signal.SIGKILL)  # left-overs of this test's user only (e.g. a killed session)
        _retry(["userdel", "--force", "--remove", self.name], ok=(0, 6, 12))


def _retry(argv: list[str], input: str | None = None, ok=(0,)) -> None:
    """useradd & co. lock /etc/passwd; parallel workers can collide, and the tools then exit 10 ('try again')."""
    deadline = time.monotonic() + 20
    while True:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True)
        if proc.returncode in ok:
            return
        if proc.returncode != 10 or time.monotonic() > deadline:
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {proc.stderr.strip()}")
        time.sleep(0.05)


@pytest.fixture
def make_user():
    users: list[LocalUser] = []

    def make(sudo: str | None = None) -> LocalUser:
        users.append(LocalUser(sudo))
        return users[-1]

    yield make
    for user in users:
        user.remove()


@pytest.fixture
def user(make_user) -> LocalUser:
    return make_user()


@pytest.fixture
def sshd(tmp_path, user):
    """A running sshd for `user`; stopped (with its connections) at teardown."""
    root = tmp_path / "sshd"
    root.mkdir()
    server = SSHServer(root, user.name)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture
def lab_state(tmp_path) -> LabState:
    return LabState(tmp_path / "lab" / ".labctl")


NODE = "node-1"


@pytest.fixture
def connect(sshd, user, lab_state):
    """Transports to the test server as the test user (password = the user's, unless given; node NODE unless
    `node=`); closed at teardown."""
    from labctl.remote.ssh import SSHTransport

    made: list[SSHTransport] = []

    def make(**kw) -> SSHTransport:
        kw.setdefault("password", user.password)
        kw.setdefault("connect_timeout", 10)
        made.append(SSHTransport(kw.pop("node", NODE), sshd.host, sshd.port, user=user.name, state=lab_state, **kw))
        return made[-1]

    yield make
    for t in made:
        t.close()

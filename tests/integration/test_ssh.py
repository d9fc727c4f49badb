"""The SSH transport against a real OpenSSH server on 127.0.0.1 (see conftest.py for the server and the user)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from labctl.errors import CommandError, TransportError
from labctl.remote.base import Script
from labctl.remote.credentials import lab_key
from labctl.remote.ssh import SSHTransport, authorize_key, forget_host, transport_for
from tests.integration.conftest import NODE

pytestmark = pytest.mark.integration

WHOAMI = Script("whoami", "id -un\n")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_nowhere(root: Path, secret: str) -> None:
    """`secret` is in no file below `root` (state, logs, keys, known_hosts, the server's own log)."""
    checked = 0
    for path in root.rglob("*"):
        if path.is_file():
            checked += 1
            assert secret.encode() not in path.read_bytes(), f"the password leaked into {path}"
    assert checked, f"nothing to check under {root}"


def authorized_keys(user) -> list[str]:
    return (user.home / ".ssh" / "authorized_keys").read_text().splitlines()


# -- credentials -----------------------------------------------------------------------------------------------


def test_first_contact_installs_the_lab_key_then_never_sends_the_password(connect, sshd, user, lab_state, tmp_path):
    t = connect()
    assert t.run(WHOAMI).stdout == f"{user.name}\n"

    key = lab_state.ssh_dir / "id_ed25519"
    assert mode_of(key) == 0o600 and mode_of(lab_state.ssh_dir) == 0o700
    assert mode_of(lab_state.known_hosts) == 0o600
    assert lab_state.known_hosts.read_text().startswith(f"{NODE} ssh-ed25519 ")
    public = key.with_suffix(".pub").read_text().split()[:2]
    assert [line.split()[:2] for line in authorized_keys(user)] == [public]
    # Installing it again changes nothing.
    t.run(authorize_key(lab_key(lab_state)))
    assert len(authorized_keys(user)) == 1
    t.close()

    # The old password no longer works, and the server must not even see an attempt with it.
    first_password = user.password
    user.set_password("pw-" + secrets.token_urlsafe(18))
    seen = len(sshd.log_text())
    assert connect().run(WHOAMI).stdout == f"{user.name}\n"
    later = sshd.log_text()[seen:]
    assert "Accepted publickey" in later
    assert "password" not in later.lower()
    assert_nowhere(tmp_path, first_password)


def test_first_contact_can_use_a_configured_key_instead_of_a_password(connect, user, lab_state, tmp_path):
    own = tmp_path / "first_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(own)], check=True)
    ssh = user.home / ".ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_text(own.with_suffix(".pub").read_text().rstrip("\n"))  # no final newline
    for path in (ssh, ssh / "authorized_keys"):
        shutil.chown(path, user.name)

    assert connect(password=None, first_key=own).run(WHOAMI).ok
    lines = authorized_keys(user)
    assert len(lines) == 2 and lines[1].endswith(" labctl")  # appended on its own line


def test_a_wrong_password_fails_at_once_with_a_hint(connect, user):
    started = time.monotonic()
    with pytest.raises(TransportError) as err:
        connect(password="not-" + user.password, connect_timeout=30).run(WHOAMI)
    assert time.monotonic() - started < 10  # not retried until the 30 s deadline
    assert NODE in str(err.value) and "refused" in str(err.value)
    assert "ssh_password" in err.value.hint
    assert user.password not in str(err.value)


def test_a_changed_host_key_is_refused_until_the_node_is_forgotten(connect, sshd, lab_state):
    connect().run(WHOAMI)
    pinned = lab_state.known_hosts.read_text()

    sshd.stop()
    sshd.new_host_key()  # what a recreated VM looks like
    sshd.start()
    with pytest.raises(TransportError) as err:
        connect().run(WHOAMI)
    assert "host key" in str(err.value) and "changed" in str(err.value)
    assert f"labctl forget-host {NODE}" in err.value.hint
    assert lab_state.known_hosts.read_text() == pinned  # the pin stays until someone decides

    assert forget_host(lab_state, NODE) is True
    assert forget_host(lab_state, NODE) is False
    assert connect().run(WHOAMI).ok
    assert lab_state.known_hosts.read_text() != pinned
    assert mode_of(lab_state.known_hosts) == 0o600


def test_transport_for_builds_from_the_lab_model(sshd, user, lab_state):
    ctx = SimpleNamespace(
        lab=SimpleNamespace(ssh_user=user.name, ssh_password=SecretStr(user.password), ssh_key=None,
                            provider=SimpleNamespace(type="tart")),
        state=lab_state,
        provider=SimpleNamespace(ssh_address=lambda node, address=None: (sshd.host, sshd.port),
                                 log_path=lambda node: lab_state.root / "logs" / f"{node.name}.tart.log"),
        address=lambda node: None,
        options={"connect_timeout": 7},
    )
    t = transport_for(ctx, SimpleNamespace(name="node-9", ssh_user=None, ssh_key=None))
    assert t.connect_timeout == 7  # shutdown asks for a short one: it only wants to know if the guest answers now
    try:
        assert t.run(WHOAMI).stdout == f"{user.name}\n"
        assert user.password not in repr(t)
    finally:
        t.close()
    assert lab_state.known_hosts.read_text().startswith("node-9 ")


# -- sudo ------------------------------------------------------------------------------------------------------


def test_passwordless_sudo_needs_no_password(connect, user):
    user.set_sudo("nopasswd")
    connect().run(WHOAMI)  # bootstrap with the password ...
    t = connect(password=None)  # ... then nothing but the key
    assert t.run(Script("uid", "id -u"), sudo=True).stdout == "0\n"
    assert t.run(Script("uid", "id -u")).stdout != "0\n"


def test_sudo_with_a_password_never_leaks_it(connect, user, lab_state, tmp_path):
    user.set_sudo("password")
    t = connect()
    assert t.run(Script("uid", "id -u"), sudo=True).stdout == "0\n"
    assert t.run(Script("uid", "id -u"), sudo=True, timeout=30).stdout == "0\n"
    # Every command line on the machine while a sudo script runs (sudo, timeout, bash, sshd's session).
    seen = t.run(Script("cmdlines", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"), sudo=True).stdout
    assert "sudo -S" in seen and user.password not in seen
    target = f"/etc/labctl-test-{user.name}/secret.conf"
    try:
        t.put(target, b"s3cret\n", 0o600, sudo=True)
        assert t.get(target, sudo=True) == b"s3cret\n"
    finally:
        shutil.rmtree(Path(target).parent, ignore_errors=True)
    with pytest.raises(CommandError) as failed:
        t.run(Script("fails", "echo going down >&2; exit 3"), sudo=True)
    assert failed.value.returncode == 3 and "going down" in str(failed.value)

    # The rule turns passwordless behind labctl's back: sudo no longer reads the password from stdin. The guard
    # must drop it rather than let bash execute it (and echo it in "command not found").
    user.set_sudo("nopasswd")
    with pytest.raises(CommandError) as guarded:
        t.run(Script("uid", "id -u"), sudo=True)
    assert "did not read the password" in str(guarded.value)

    for error in (failed.value, guarded.value):
        assert user.password not in str(error)
    assert_nowhere(tmp_path, user.password)


def test_sudo_asking_for_a_password_when_none_is_configured_says_so(connect, user):
    user.set_sudo("password")
    connect().run(WHOAMI)
    with pytest.raises(TransportError, match="sudo needs a password"):
        connect(password=None).run(Script("uid", "id -u"), sudo=True)


# -- running ---------------------------------------------------------------------------------------------------


def test_ten_megabytes_of_output_arrive_intact(connect, lab_state):
    count = 1_500_000  # 10.9 MB of numbered lines: a lost, doubled or reordered chunk shows
    result = connect().run(Script("big", f"echo first >&2; seq 1 {count}; echo last >&2"))
    assert len(result.stdout) > 10_000_000
    assert result.stdout == "".join(f"{i}\n" for i in range(1, count + 1))
    assert result.stderr == "first\nlast\n"
    log = lab_state.node_log(NODE).read_text()
    assert f" {count}\n" in log and " last\n" in log


def test_a_command_over_its_timeout_is_killed(connect, user):
    user.set_sudo("nopasswd")
    t = connect()
    for sudo in (False, True):
        pidfile = f"/tmp/labctl-test-{user.name}-{int(sudo)}.pid"
        started = time.monotonic()
        with pytest.raises(CommandError) as err:
            t.run(Script("hangs", f"echo begun; sleep 60 & echo $! > {pidfile}; wait"), sudo=sudo, timeout=1)
        assert time.monotonic() - started < 8
        assert err.value.returncode is None
        assert "timed out after 1s" in str(err.value) and "hangs" in str(err.value) and "begun" in err.value.tail
        pid = int(Path(pidfile).read_text())
        Path(pidfile).unlink()
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, "the timed-out command's child still runs on the node"
            time.sleep(0.05)
    assert t.run(WHOAMI).ok  # the connection survives a timeout


def test_sshd_dying_mid_command_names_node_and_command(connect, sshd, lab_state):
    t = connect()
    t.run(WHOAMI)
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            t.run(Script("slow.step", "echo started; sleep 30"))
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=slow)
    worker.start()
    deadline = time.monotonic() + 10
    while " started" not in lab_state.node_log(NODE).read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sshd.kill()
    worker.join(10)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], CommandError | TransportError)
    assert NODE in str(errors[0]) and "slow.step" in str(errors[0]) and "lost the connection" in str(errors[0])

    sshd.start()  # the node comes back: the next use reconnects by itself
    assert t.run(WHOAMI).ok


def test_parallel_steps_share_one_connection(connect, sshd):
    t = connect()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: t.run(Script(f"n{i}", f"echo {i}")).stdout, range(8)))
    assert results == [f"{i}\n" for i in range(8)]
    log = sshd.log_text()
    assert log.count("Accepted password") + log.count("Accepted publickey") == 1  # one login for all eight


# -- files -----------------------------------------------------------------------------------------------------


def test_put_and_get_keep_content_and_modes(connect, user):
    user.set_sudo("nopasswd")
    t = connect()
    data = bytes(range(256)) * 1000
    path = user.home / "conf" / "deep" / "file.bin"
    t.put(str(path), data, 0o600)
    assert path.read_bytes() == data and mode_of(path) == 0o600 and path.stat().st_uid == user.uid
    t.put(str(path), b"second\n", 0o640)  # replaces the file: new content, new mode, nothing left beside it
    assert path.read_bytes() == b"second\n" and mode_of(path) == 0o640
    assert os.listdir(path.parent) == ["file.bin"]
    assert t.get(str(path)) == b"second\n"

    target = Path(f"/etc/labctl-test-{user.name}/sub/root.bin")
    try:
        t.put(str(target), data, 0o640, sudo=True)
        assert target.read_bytes() == data and mode_of(target) == 0o640
        assert (target.stat().st_uid, target.stat().st_gid) == (0, 0)
        assert os.listdir(target.parent) == ["root.bin"]
        assert t.get(str(target), sudo=True) == data
    finally:
        shutil.rmtree(target.parent.parent, ignore_errors=True)
    assert not [p for p in user.home.iterdir() if p.name.startswith(".labctl")]  # the staged copy is gone

    for sudo in (False, True):
        with pytest.raises(CommandError) as err:
            t.get(f"{user.home}/missing", sudo=sudo)
        assert NODE in str(err.value) and "missing" in str(err.value)


# -- connecting ------------------------------------------------------------------------------------------------


def test_connect_retries_until_a_late_sshd_comes_up(connect, sshd):
    sshd.stop()  # the VM is still booting
    late = threading.Timer(1.0, sshd.start)
    started = time.monotonic()
    late.start()
    try:
        assert connect(connect_timeout=20).run(WHOAMI).ok
    finally:
        late.join()
    assert time.monotonic() - started >= 1.0


def test_connect_gives_up_after_the_deadline_with_a_clear_error(lab_state, unused_port):
    port = unused_port  # nothing listens here
    t = SSHTransport(NODE, "127.0.0.1", port, user="nobody", state=lab_state, password="x", connect_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(TransportError) as err:
        t.run(WHOAMI)
    assert 1.5 <= time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in str(err.value) and "within 1.5s" in str(err.value)
    assert NODE in str(err.value) and "labctl status" in err.value.hint


def test_a_server_that_drops_connections_before_its_banner_is_retried(lab_state):
    # What a VM whose sshd is still starting looks like: the port accepts, then closes.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted, done = [], threading.Event()

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            conn.close()
            if done.is_set():
                return
            accepted.append(conn)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    t = SSHTransport(NODE, "127.0.0.1", port, user="nobody", state=lab_state, password="x", connect_timeout=1.5)
    try:
        with pytest.raises(TransportError) as err:
            t.run(WHOAMI)
    finally:
        done.set()
        socket.create_connection(("127.0.0.1", port)).close()  # wakes the blocked accept()
        server.join(5)
        listener.close()
    assert len(accepted) > 1 and "within" in str(err.value)

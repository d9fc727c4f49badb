"""A node whose SSH session stops answering (its sshd processes frozen with SIGSTOP), and a VM that is not booting:
every remote operation ends within its bound with "<node>: no answer within N s"; the wait for a booting VM's sshd
is configurable, gives up when the VM is not running, and ends at once on Ctrl-C."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from labctl.errors import TransportError
from labctl.remote.base import Script
from labctl.remote.ssh import SSHTransport, transport_for
from tests.integration.conftest import NODE, _descendants, _kill
from tests.sim.fake_tart import wait_for

pytestmark = pytest.mark.integration

ANSWER = 2.0
# Only a transport that never gives up reaches this (paramiko's own waits are an hour, or forever).
NEVER = 120.0


@pytest.fixture
def connect(connect):
    """The shared transports (tests/integration/conftest.py), with this file's short answer bound."""

    def make(**kw) -> SSHTransport:
        kw.setdefault("answer_timeout", ANSWER)
        return connect(**kw)

    return make


@pytest.fixture
def freeze(sshd):
    """SIGSTOP every process of the server's connections (the per-connection sshd and the session under it): the
    TCP connection stays open and nothing answers on it. Killed at teardown."""
    frozen: list[int] = []

    def stop() -> None:
        pids = _descendants(sshd.proc.pid)
        assert pids, "no connection to freeze"
        _kill(pids, signal.SIGSTOP)
        frozen.extend(pids)

    yield stop
    _kill(frozen, signal.SIGKILL)
    _kill(frozen, signal.SIGCONT)


def within(fn, seconds: float = NEVER):
    """fn() in a thread; its exception (or result) if it finishes within `seconds`, else the test fails."""
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(fn)
        try:
            return fut.exception(timeout=seconds) or fut.result()
        except TimeoutError:
            pytest.fail(f"still blocked after {seconds}s")


def assert_no_answer(outcome) -> None:
    assert isinstance(outcome, TransportError), outcome
    assert str(outcome).startswith(f"{NODE}: no answer within {ANSWER:g} s"), outcome


def test_a_command_on_a_frozen_session_fails_within_the_answer_bound(connect, freeze):
    t = connect()
    assert t.run(Script("whoami", "id -un\n")).ok
    freeze()
    # before: opening the channel waited paramiko's hour; the step timeout had not started yet
    assert_no_answer(within(lambda: t.run(Script("true", "true\n"), timeout=5)))


def test_sftp_get_and_put_on_a_frozen_session_fail_within_the_answer_bound(connect, freeze, user):
    t, t2 = connect(), connect()
    t.put("probe.txt", b"x")  # opens the SFTP sessions
    t2.put("other.txt", b"x")
    freeze()
    assert_no_answer(within(lambda: t.get("probe.txt")))
    assert_no_answer(within(lambda: t2.put("other.txt", b"y")))


def test_a_silent_command_whose_session_freezes_is_noticed_by_a_keepalive(connect, freeze, user):
    t = connect()
    marker = user.home / "started"
    script = Script("silent", 'touch "$HOME/started"; sleep 600\n')  # prints nothing, no timeout: only keepalives tell
    outcome = {}

    def run():
        try:
            t.run(script)
        except Exception as exc:  # noqa: BLE001 - what the caller sees is the point
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    wait_for(marker.exists, timeout=30, what="the command to start")
    freeze()
    worker.join(NEVER)
    assert not worker.is_alive(), "still blocked"
    assert_no_answer(outcome.get("error"))


def test_the_wait_for_sshd_gives_up_at_once_when_the_vm_is_not_running(lab_state, unused_port, monkeypatch):
    import labctl.remote.sshwait as sshwait

    monkeypatch.setattr(sshwait, "ALIVE_EVERY", 0.0)  # ask at the first failed attempt
    t = SSHTransport(NODE, "127.0.0.1", unused_port, user="nobody", state=lab_state, password="x",
                     connect_timeout=3600, vm_running=lambda: False)
    outcome = within(lambda: t.run(Script("true", "true\n")))
    assert isinstance(outcome, TransportError) and "its VM is not running" in str(outcome), outcome


def test_ctrl_c_ends_the_wait_for_sshd_at_once(lab_state, unused_port):
    cancelled = threading.Event()
    t = SSHTransport(NODE, "127.0.0.1", unused_port, user="nobody", state=lab_state, password="x",
                     connect_timeout=3600, cancelled=cancelled)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(t.run, Script("true", "true\n"))
        cancelled.set()
        outcome = fut.exception(timeout=NEVER)
    assert "interrupted" in str(outcome), outcome


def test_the_install_wait_for_sshd_is_long_and_overridable(lab_state, monkeypatch):
    """A first boot under TCG on a busy host took 3.5 minutes to bring sshd up: the default wait covers that, and
    LABCTL_SSH_WAIT sets it; read-only and quick commands pass their own short one."""
    from pydantic import SecretStr

    from labctl.errors import UsageError

    lab = SimpleNamespace(ssh_user="u", ssh_password=SecretStr("p"), ssh_key=None,
                          provider=SimpleNamespace(type="qemu"))
    waits = {}  # what the provider says a boot takes (QEMU: by accelerator); None: the transport's default
    provider = SimpleNamespace(ssh_address=lambda node, address=None: ("127.0.0.1", 22), list=lambda: {},
                               ssh_wait_seconds=lambda node: waits.get(node.name),
                               log_path=lambda node: lab_state.root / "logs" / f"{node.name}.console.log")
    node = SimpleNamespace(name=NODE, ssh_user=None, ssh_key=None)  # a VM: the lab's user and key

    def made(**options):
        return transport_for(SimpleNamespace(provider=provider, lab=lab, state=lab_state, options=options,
                                             address=lambda node: None), node)

    monkeypatch.delenv("LABCTL_SSH_WAIT", raising=False)
    assert made().connect_timeout >= 300
    waits[NODE] = 1200  # the provider's own (QEMU under TCG); the environment still overrides it
    assert made().connect_timeout == 1200
    monkeypatch.setenv("LABCTL_SSH_WAIT", "900")
    assert made().connect_timeout == 900
    assert made(connect_timeout=10).connect_timeout == 10
    monkeypatch.setenv("LABCTL_SSH_WAIT", "soon")
    with pytest.raises(UsageError, match="LABCTL_SSH_WAIT"):
        made()

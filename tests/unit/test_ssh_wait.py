"""The wait for a booting guest's sshd: how long (QEMU: by accelerator, or provider.qemu.ssh_wait_seconds) and what
the error says when it runs out (the VM running or not, and its console log), without any real SSH: the handshake
is a function that refuses, and the wait is zero seconds long, so no assertion depends on the clock."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from labctl.errors import TransportError
from labctl.remote import sshwait
from labctl.remote.sshwait import wait_for_sshd


def refuse(deadline: float):
    raise ConnectionRefusedError(111, "Connection refused")


def gave_up(vm_running, console_log=Path("/lab/.labctl/logs/m1.console.log"), longer="LONGER") -> TransportError:
    with pytest.raises(TransportError) as err:
        wait_for_sshd(refuse, node="m1", address="127.0.0.1:10022", timeout=0, vm_running=vm_running,
                      cancelled=threading.Event(), log_path="/lab/.labctl/logs/m1.log", console_log=console_log,
                      longer=longer)
    return err.value


def test_a_running_vm_whose_sshd_never_answered_points_at_its_console_log():
    error = gave_up(lambda: True)
    assert "its VM is running, but sshd does not answer" in error.message
    assert "is the VM running?" not in f"{error.message} {error.hint}"
    assert error.hint.startswith("its console log /lab/.labctl/logs/m1.console.log shows how far the boot got")
    assert "needs a longer wait: LONGER" in error.hint and "labctl's log: /lab/.labctl/logs/m1.log" in error.hint


def test_a_vm_that_is_not_running_says_so_and_how_to_start_it():
    error = gave_up(lambda: False)
    assert "its VM is not running" in error.message
    assert error.hint.startswith("`labctl boot` starts it; its console log /lab/.labctl/logs/m1.console.log")


def test_when_the_provider_cannot_say_the_error_says_what_to_check():
    def broken():
        raise OSError("tart list failed")

    error = gave_up(broken)
    assert "booting or not reachable yet" in error.message and "`labctl status` shows both" in error.hint


def test_the_provider_default_applies_unless_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv(sshwait.ENV_CONNECT_TIMEOUT, raising=False)
    assert sshwait.connect_timeout_default() == sshwait.CONNECT_TIMEOUT
    assert sshwait.connect_timeout_default(1200.0) == 1200.0
    monkeypatch.setenv(sshwait.ENV_CONNECT_TIMEOUT, "90")
    assert sshwait.connect_timeout_default(1200.0) == 90.0


# ---- QEMU: by accelerator ------------------------------------------------------------------------------------

@pytest.fixture
def provider(tmp_path, fake_qemu):
    from tests.unit.test_qemu_provider import make_lab, make_provider

    lab, settings = make_lab(tmp_path)
    return make_provider(tmp_path, settings, lab)


def run_record(tmp_path: Path, name: str, accel: str) -> None:
    directory = tmp_path / ".labctl" / "qemu" / name
    directory.mkdir(parents=True, exist_ok=True)
    # as QemuProvider.start writes it (what the wait reads is "accel")
    (directory / "run.json").write_text(json.dumps({"accel": accel, "qmp": str(directory / "qmp.sock")}))


def test_the_qemu_wait_follows_the_accelerator_the_vm_runs_under(provider, tmp_path, monkeypatch):
    from labctl.providers.qemu import ENV_ACCEL, SSH_WAIT

    monkeypatch.delenv(ENV_ACCEL, raising=False)
    run_record(tmp_path, "m1", "tcg")
    run_record(tmp_path, "w1", "kvm")
    assert provider.ssh_wait_seconds("m1") == SSH_WAIT["tcg"] > 3 * SSH_WAIT["kvm"]
    assert provider.ssh_wait_seconds("w1") == SSH_WAIT["kvm"]
    # not started by labctl yet: the accelerator asked for, without a probe
    monkeypatch.setenv(ENV_ACCEL, "kvm")
    assert provider.ssh_wait_seconds("x9") == SSH_WAIT["kvm"]


def test_clusters_json_sets_the_qemu_wait(provider, tmp_path):
    run_record(tmp_path, "m1", "tcg")
    provider.settings = provider.settings.model_copy(update={"ssh_wait_seconds": 45})
    assert provider.ssh_wait_seconds("m1") == 45.0


def test_the_qemu_transport_waits_as_the_provider_says_and_points_at_the_console(provider, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from pydantic import SecretStr

    from labctl.remote.ssh import transport_for
    from labctl.state import LabState

    monkeypatch.delenv(sshwait.ENV_CONNECT_TIMEOUT, raising=False)
    run_record(tmp_path, "m1", "tcg")
    lab = SimpleNamespace(ssh_user="u", ssh_password=SecretStr("p"), ssh_key=None,
                          provider=SimpleNamespace(type="qemu"))
    provider.ssh_address = lambda node, address=None: ("127.0.0.1", 10022)
    ctx = SimpleNamespace(provider=provider, lab=lab, state=LabState(tmp_path / ".labctl"), options={},
                          address=lambda node: None)
    t = transport_for(ctx, SimpleNamespace(name="m1", ssh_user=None, ssh_key=None))
    assert t.connect_timeout == 1200.0
    assert t._console_log == tmp_path / ".labctl" / "logs" / "m1.console.log"
    assert t._longer == "provider.qemu.ssh_wait_seconds in clusters.json, or LABCTL_SSH_WAIT=<seconds>"

"""apt on a node: the lock wait every apt-using script includes (templates/node/apt.inc.j2), run for real here
against an fcntl lock held by another process (as apt and dpkg hold theirs), and labctl.remote.apt.failure, the one
place that tells a held lock, an unreachable host and every other apt error apart."""

from __future__ import annotations

import subprocess
import sys

import pytest

from labctl.errors import CommandError
from labctl.remote import apt
from labctl.render import render
from tests.conftest import shellcheck

HOLDER = "import fcntl, sys; f = open(sys.argv[1], 'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"


def wait_script(lock: str, timeout: int, body: str) -> str:
    params = {**apt.params(), "apt_locks": [lock, lock + ".absent"], "apt_lock_timeout": timeout}
    return "#!/usr/bin/env bash\nset -euo pipefail\n" + render("node/apt.inc.j2", **params) + body + "\n"


@pytest.fixture
def held(tmp_path):
    """A process holding an fcntl write lock on a file (like unattended-upgrades on /var/lib/apt/lists/lock)."""
    lock = tmp_path / "lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    yield str(lock), proc
    proc.kill()
    proc.wait()


def test_the_script_passes_shellcheck(tmp_path):
    path = tmp_path / "apt.sh"
    path.write_text(wait_script("/var/lib/apt/lists/lock", 600, 'apt_get update\napt_run apt-mark hold kubelet'))
    result = subprocess.run([shellcheck(), "--shell=bash", "--severity=style", str(path)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_a_lock_held_past_the_deadline_names_the_lock_and_its_holder(held):
    lock, proc = held
    result = subprocess.run(["bash", "-c", wait_script(lock, 0, "apt_run echo ran")], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == apt.EXIT_APT_LOCKED
    assert "ran" not in result.stdout
    assert result.stderr.splitlines()[-1].startswith(f"{apt.MARKER} locked {lock} {proc.pid} {sys.executable} -c ")


def test_the_script_waits_while_the_lock_is_held_then_runs(held):
    lock, proc = held
    script = subprocess.Popen(["bash", "-c", wait_script(lock, 600, "apt_run echo ran")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert script.stderr.readline() == f"waiting for {lock}, held by process {proc.pid} {sys.executable} -c {HOLDER} {lock} \n"
    proc.kill()  # the holder is done: its lock goes with it
    out, err = script.communicate(timeout=60)
    assert script.returncode == 0, err
    assert out == "ran\n"


def test_a_failing_apt_step_ends_the_script_with_its_marker(tmp_path):
    result = subprocess.run(["bash", "-c", wait_script(str(tmp_path / "free"), 0, "apt_run sh -c 'echo E: boom; exit 100'\necho after")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == apt.EXIT_APT_FAILED
    assert result.stdout == "E: boom\n"
    assert result.stderr == f"{apt.MARKER} failed sh -c echo E: boom; exit 100 (exit 100)\n"


# ---- classification ----------------------------------------------------------------------------------------------

LOCKED = (apt.EXIT_APT_LOCKED, "waiting for /var/lib/apt/lists/lock, held by process 812 /usr/bin/python3 "
          "/usr/bin/unattended-upgrade\nlabctl-apt: locked /var/lib/apt/lists/lock 812 /usr/bin/python3 "
          "/usr/bin/unattended-upgrade ")
UNREACHABLE = (apt.EXIT_APT_FAILED, "Err:1 https://pkgs.k8s.io/core:/stable:/v1.35/deb  InRelease\n"
               "  Could not resolve 'pkgs.k8s.io'\nW: Failed to fetch https://pkgs.k8s.io/core:/stable:/v1.35/deb/"
               "InRelease  Could not resolve 'pkgs.k8s.io'\nlabctl-apt: failed apt-get update of the Kubernetes "
               "repository (exit 100)")
NOT_SIGNED = (apt.EXIT_APT_FAILED, "Get:1 https://pkgs.k8s.io/core:/stable:/v1.35/deb  InRelease [1,186 B]\n"
              "Err:1 https://pkgs.k8s.io/core:/stable:/v1.35/deb  InRelease\n  The following signatures couldn't be "
              "verified because the public key is not available: NO_PUBKEY 234654DA9A296436\n"
              "E: The repository 'https://pkgs.k8s.io/core:/stable:/v1.35/deb  InRelease' is not signed.\n"
              "labctl-apt: failed apt-get update of the Kubernetes repository (exit 100)")
NO_VERSION = (apt.EXIT_APT_FAILED, "E: Version '1.35.99-1.1' for 'kubeadm' was not found\n"
              "labctl-apt: failed apt-get -q -y install kubeadm=1.35.99-1.1 (exit 100)")
OTHER = (apt.EXIT_APT_FAILED, "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
         "labctl-apt: failed apt-get -q -y install containerd (exit 100)")


@pytest.mark.parametrize(
    ("exit_output", "says", "hint"),
    [
        (LOCKED, "apt is busy — /var/lib/apt/lists/lock has been held by process 812 (/usr/bin/python3 "
                 "/usr/bin/unattended-upgrade) for more than 600 s", "wait until it finishes (`ps -p 812`"),
        (UNREACHABLE, "cannot reach pkgs.k8s.io", "check its network and DNS"),
        (NOT_SIGNED, "a repository's signature does not verify", "kubernetes-apt-keyring.gpg"),
        (NO_VERSION, "a package or version is not in the node's repositories", "apt-cache madison"),
        (OTHER, "apt-get -q -y install containerd (exit 100) failed", "read apt's error above"),
    ],
    ids=["locked", "unreachable", "not-signed", "no-version", "other"],
)
def test_each_apt_failure_gets_its_own_message_and_next_step(exit_output, says, hint):
    code, output = exit_output
    error = apt.failure(CommandError("dev-worker1", "kubepkgs.apply", code, output), "installing kubeadm")
    assert error is not None
    assert error.message.startswith(f"dev-worker1: installing kubeadm: {says}"), error.message
    assert hint in error.hint
    network = "network" in error.hint or "cannot reach" in error.message
    assert network == (exit_output is UNREACHABLE), "a network diagnosis only for a network fault"
    assert apt.MARKER not in error.message


def test_other_exits_are_not_apt_failures():
    assert apt.failure(CommandError("n", "kubepkgs.apply", 11, "kubeadm 1.35.9 is not in the repository"), "x") is None

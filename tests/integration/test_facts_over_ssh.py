"""The read-only facts script, run for real over a real sshd with sudo, parses as NodeFacts and tells the truth."""

from __future__ import annotations

import os
import platform
import socket

import pytest

from labctl.remote.facts import NodeFacts, gather
from labctl.remote.ssh import SSHTransport

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sudo_mode", ["nopasswd", "password"])
def test_facts_over_ssh_with_sudo(sshd, user, lab_state, sudo_mode):
    user.set_sudo(sudo_mode)
    t = SSHTransport("node-1", sshd.host, sshd.port, user=user.name, state=lab_state, password=user.password,
                     connect_timeout=10)
    try:
        facts = gather(t)
    finally:
        t.close()
    assert isinstance(facts, NodeFacts)
    assert facts.uid == 0  # gathered through sudo: root-only files are visible
    assert facts.hostname == socket.gethostname()
    assert facts.arch == platform.machine()
    with open("/etc/machine-id") as f:
        assert facts.machine_id == f.read().strip()
    with open("/proc/swaps") as f:
        active = [line.split()[0] for line in f.read().splitlines()[1:]]
    assert facts.swap.devices == active
    assert facts.modules.keys() == {"overlay", "br_netfilter"}
    assert facts.sysctl["net.ipv4.ip_forward"] == open("/proc/sys/net/ipv4/ip_forward").read().strip()
    assert facts.files["/etc/kubernetes/admin.conf"] == os.path.exists("/etc/kubernetes/admin.conf")
    # the node log has the command; the password is nowhere in it
    log = lab_state.node_log("node-1").read_text()
    assert "facts" in log and user.password not in log

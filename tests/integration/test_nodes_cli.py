"""`labctl ssh` and `labctl logs` (issue 18) against a real OpenSSH server, each command a real `labctl` process.

The VM is the fake tart's; its sshd is a real one on the VM's address (as in test_hung_node_cli.py). `labctl ssh`
execs the real system ssh: its first contact pins the host key and installs the lab key through labctl's transport,
then OpenSSH logs in with exactly those (the command's exit code comes back), and refuses the node once its host
key changed. `labctl logs` runs the real logs script with sudo over labctl's transport.
"""

from __future__ import annotations

import stat

import pytest

from tests.integration.conftest import SSHServer
from tests.integration.test_hung_node_cli import NODE, finish, lab, labctl  # noqa: F401  (lab: the fixture)

pytestmark = pytest.mark.integration


def test_ssh_runs_a_command_with_the_lab_key_and_pinned_host_key_and_logs_come_over_ssh(lab, tmp_path):  # noqa: F811
    labdir, user, fake, _ = lab
    code, out, err, _ = finish(labctl(labdir, 22, "install", "--only", "vms"))
    assert code == 0, out + err
    server = SSHServer(tmp_path, user.name)
    server.host = fake.tart("ip", NODE).stdout.strip()
    server.start()
    try:
        code, out, err, _ = finish(labctl(labdir, server.port, "ssh", NODE, "--", "sh", "-c",
                                          'echo "hello from $(id -un)"; exit 7'))
        assert code == 7, out + err
        assert f"hello from {user.name}" in out
        assert user.password not in out + err
        key = labdir / ".labctl" / "ssh" / "id_ed25519"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert "Accepted publickey" in server.log_text()

        code, out, err, _ = finish(labctl(labdir, server.port, "logs", NODE, "--since", "1h"))
        assert code == 0, out + err
        node_log = (labdir / ".labctl" / "logs" / f"{NODE}.log").read_text()
        assert "= logs.collect: exit 0" in node_log and "= logs.cleanup: exit 0" in node_log

        code, out, err, _ = finish(labctl(labdir, server.port, "logs", "--collect", "bug"))
        assert code == 0, out + err
        got = labdir / "bug" / "hung" / NODE
        assert {"journal-kubelet.log", "journal-containerd.log", "crictl-ps.txt", "dmesg.txt", "labctl.log"} <= \
            {p.name for p in got.iterdir()}
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in got.rglob("*") if p.is_file())

        # the VM "was recreated": OpenSSH refuses it against labctl's pin, as labctl itself would
        server.stop()
        server.new_host_key()
        server.start()
        code, out, err, _ = finish(labctl(labdir, server.port, "ssh", NODE, "--", "true"))
        assert code == 255 and "Host key verification failed" in err, out + err
    finally:
        server.stop()

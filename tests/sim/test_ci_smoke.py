"""scripts/ci-smoke.sh, the CI recipe of docs/ci.md, run for real by bash against the simulated lab.

The script runs as it is (set -e, its steps, their exit codes); its LABCTL is a small client that hands each
`labctl ...` to this test process, which runs it through the real entry point (run_cli) inside the simulated lab:
SimLab's VMs, nodes and API servers live in this process, so labctl has to as well. What the sim cannot be is the
internet: the Ubuntu cloud image `init` names is put in the image cache beforehand (as a cached CI runner has it),
and the VMs are the simulated lab's (tests/sim/sim_lab.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labctl import images
from tests.conftest import ROOT, run_cli, shellcheck
from tests.sim.fake_qemu import FakeQemu
from tests.sim.sim_lab import SimLab, lease_prefix

SCRIPT = ROOT / "scripts" / "ci-smoke.sh"
ENV = {"LABCTL_HOST_MEMORY_MIB": str(16 * 1024), "LABCTL_HOST_CPUS": "4",  # a GitHub-hosted Linux runner's size
       "LABCTL_QEMU_ACCEL": "kvm"}

CLIENT = """\
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["SIM_LABCTL_SOCKET"])
s.sendall(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}).encode() + b"\\n")
answer = json.loads(s.makefile().readline())
sys.stdout.write(answer["out"]); sys.stderr.write(answer["err"])
sys.exit(answer["code"])
"""


def test_the_ci_script_is_clean_shell():
    done = subprocess.run([shellcheck(), "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_the_ci_script_installs_one_cluster_and_writes_the_smoke_junit(tmp_path, fake_tart, monkeypatch):
    # doctor's qemu checks ask qemu-img and qemu-system-*: the fakes, beside the fake tart (its own directory)
    (tmp_path / "qemu").mkdir()
    fake_qemu = FakeQemu(tmp_path / "qemu")
    for key, value in fake_qemu.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    # the runner's image cache holds the cloud image init names (what the fake qemu-img reads as a 3.5 GiB qcow2)
    cached = images.cached_path(images.ubuntu_cloud_image())
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps({"format": "qcow2", "virtual-size": int(3.5 * 1024**3)}))

    sock_path = tmp_path / "labctl.sock"
    client = tmp_path / "labctl-client.py"
    client.write_text(CLIENT)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen(1)
    server.settimeout(0.5)
    env = {**os.environ, "SIM_LABCTL_SOCKET": str(sock_path), "LABCTL": f"{sys.executable} {client}",
           "LABCTL_CI_DIR": "ci-lab", "LABCTL_CI_JUNIT": "out/smoke.xml"}
    (tmp_path / "out").mkdir()
    script = subprocess.Popen(["bash", str(SCRIPT)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    ran: list[tuple[list[str], int]] = []
    sim: SimLab | None = None
    try:
        # labctl runs in this (main) thread, as it does in its own process: its Ctrl-C handling needs that
        while script.poll() is None:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                request = json.loads(conn.makefile().readline())
                os.chdir(request["cwd"])
                config = Path(request["cwd"]) / "clusters.json"
                if sim is None and request["argv"][0] != "init":
                    sim = SimLab(config, fake_tart).__enter__()  # the lab init wrote, simulated
                result = run_cli(*request["argv"], env=ENV)
                ran.append((request["argv"], result.code))
                conn.sendall(json.dumps({"out": result.out, "err": result.err, "code": result.code}).encode()
                             + b"\n")
        output = script.stdout.read()
    finally:
        if script.poll() is None:
            script.kill()
        if sim is not None:
            sim.__exit__(None, None, None)
        server.close()
    assert script.returncode == 0, output
    assert ran == [(["init", "--provider", "qemu", "--force"], 0), (["validate"], 0), (["doctor"], 0),
                   (["install"], 0), (["smoke", "--junit", str(tmp_path / "out" / "smoke.xml")], 0)], output
    assert "::group::labctl install" in output and output.rstrip().endswith(f"{tmp_path}/out/smoke.xml")
    suite = ET.parse(tmp_path / "out" / "smoke.xml").getroot()
    cases = suite.findall(".//testcase")
    assert cases and not suite.findall(".//failure") and not suite.findall(".//error")
    assert sorted(n.name for n in sim.nodes.values()) == ["lab-master", "lab-worker1"]  # what init sized for 16 GiB


@pytest.fixture(autouse=True)
def _back_home(monkeypatch):
    monkeypatch.chdir(Path.cwd())  # the test changes directory as the script does; put it back afterwards

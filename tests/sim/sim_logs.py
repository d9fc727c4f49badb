"""The node side of `labctl logs` and `labctl ssh` (labctl/nodelogs.py, labctl/remote/login.py) in the simulation.

`logs.collect` (templates/node/logs.sh.j2) leaves a tarball under /tmp on the node and prints its path, as the real
script does: the journals of the asked units, and with extras `crictl ps -a`, the dmesg tail and the kubelet's
kube-system pod logs. Their content follows the node's state: a unit that is not installed has no journal entries
(journalctl then prints "-- No entries --"); crictl is there once cri-tools is (kubepkgs installs it with kubeadm)
and lists the control plane's static pods while containerd runs; the kubelet writes a pod's log under
/var/log/pods/<namespace>_<pod>_<uid>/<container>/0.log (the CRI log layout) for each static pod manifest.
`logs.cleanup` removes the tarball; `ssh.first-contact` is `true`.
"""

from __future__ import annotations

import io
import secrets
import tarfile
import uuid

from labctl.remote import facts as F

NO_ENTRIES = "-- No entries --\n"  # what journalctl prints when nothing matches


class LogScripts:
    """Mixed into SimNode: the scripts of `labctl logs` and `labctl ssh`."""

    def _ssh_first_contact(self, p, address):
        return 0, ""

    def _static_pods(self) -> list[str]:
        return [path.rsplit("/", 1)[1].removesuffix(".yaml") for path in F.MANIFESTS if self.facts["files"].get(path)]

    def _journal(self, unit: str) -> str:
        f = self.facts
        installed = f["kubelet"]["enabled"] == "enabled" if unit == "kubelet" else f["containerd"]["installed"]
        if not installed:
            return NO_ENTRIES
        state = f["kubelet"]["active"] if unit == "kubelet" else f["containerd"]["service"]["active"]
        return f"2025-01-01T00:00:00+00:00 {self.name} systemd[1]: {unit}.service: {state}\n"

    def _crictl_ps(self) -> str:
        f = self.facts
        if "cri-tools" not in f["packages"]:
            return "crictl is not installed on this node\n"
        if f["containerd"]["service"]["active"] != "active":
            return ('time="2025-01-01T00:00:00Z" level=fatal msg="validate service connection: validate CRI v1 '
                    'runtime API for endpoint \\"unix:///run/containerd/containerd.sock\\": connection refused"\n'
                    '\nlabctl: "crictl ps -a" exited 1\n')
        lines = ["CONTAINER           IMAGE               CREATED             STATE               NAME"]
        lines += [f"{secrets.token_hex(6)}        sha256:{secrets.token_hex(4)}     1 minute ago        Running"
                  f"             {pod}" for pod in self._static_pods()]
        return "\n".join(lines) + "\n"

    def _logs_collect(self, p, address):
        members = {f"journal-{unit}.log": self._journal(unit) for unit in p["units"]}
        if p["extras"]:
            members["crictl-ps.txt"] = self._crictl_ps()
            members["dmesg.txt"] = f"[Wed Jan  1 00:00:00 2025] Linux version {self.facts['kernel']}\n"
            for pod in self._static_pods():
                folder = f"pods/{p['namespace']}_{pod}-{self.name}_{uuid.uuid4()}/{pod}"
                members[f"{folder}/0.log"] = f"2025-01-01T00:00:00.000000000Z stderr F {pod} started\n"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, text in members.items():
                data = text.encode()
                info = tarfile.TarInfo(f"./{name}")
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        path = f"/tmp/labctl-logs.{secrets.token_hex(4)}.tgz"
        self.files[path] = buffer.getvalue()
        return 0, path

    def _logs_cleanup(self, p, address):
        self.files.pop(p["path"], None)
        return 0, ""

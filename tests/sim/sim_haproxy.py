"""The local API balancer on a simulated worker (`HaproxyNode`, part of SimNode): Ubuntu's haproxy package and
the `endpoint.haproxy` / `endpoint.haproxy-probe` scripts (templates/node/haproxy.sh.j2, labctl/kube/balancer.py).

What the real one does and the model keeps: the package (apt) installs, enables and starts haproxy.service with
the distribution's own config (no listener on 6443; Debian policy starts a daemon on install); the service runs
whatever /etc/haproxy/haproxy.cfg says; after a reboot it runs again when enabled. Where a connection to
127.0.0.1:6443 goes is read from the config the node HAS (its `bind` and `server` lines), and a server counts
only while its API server answers there (haproxy's health check, `option httpchk GET /readyz`): SimCluster.route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.sim.sim_node import SimNode

PACKAGE = {"version": "2.8.16-0ubuntu0.24.04.1", "status": "ii "}  # noble-updates' haproxy
DISTRO_CONFIG = "global\n    log /dev/log local0\n    user haproxy\n    group haproxy\n    daemon\n"


class HaproxyNode:
    """haproxy on a SimNode (mixed into it: uses its `facts`)."""

    def haproxy_fresh(self: SimNode) -> None:
        self.haproxy = {"config": None, "active": "inactive", "enabled": "disabled"}

    def haproxy_installed(self: SimNode) -> bool:
        pkg = self.facts["packages"].get("haproxy")
        return bool(pkg) and pkg["status"][1:2] == "i"

    def haproxy_package_installed(self: SimNode) -> None:
        """`apt-get install haproxy`: the package's config, the service enabled and started."""
        self.facts["packages"]["haproxy"] = dict(PACKAGE)
        if self.haproxy["config"] is None:
            self.haproxy["config"] = DISTRO_CONFIG
        self.haproxy.update(active="active", enabled="enabled")

    def haproxy_rebooted(self: SimNode) -> None:
        self.haproxy["active"] = "active" if self.haproxy["enabled"] == "enabled" else "inactive"

    def haproxy_backends(self: SimNode, port: int) -> list[str]:
        """The addresses 127.0.0.1:`port` forwards to: none unless haproxy runs with a config that binds there."""
        config = self.haproxy["config"] or ""
        if self.haproxy["active"] != "active":
            return []
        lines = [line.split("#", 1)[0].split() for line in config.splitlines()]
        if ["bind", f"127.0.0.1:{port}"] not in lines:
            return []
        return [words[2].rsplit(":", 1)[0] for words in lines
                if len(words) >= 3 and words[0] == "server" and words[2].endswith(f":{port}")]

    def _endpoint_haproxy_probe(self: SimNode, p, address):
        h = self.haproxy
        config = "missing" if h["config"] is None else ("same" if h["config"] == p["config"] else "differs")
        return 0, (f"installed={'yes' if self.haproxy_installed() else 'no'}\nconfig={config}\n"
                   f"active={h['active']}\nenabled={h['enabled']}")

    def _endpoint_haproxy(self: SimNode, p, address):
        if not self.haproxy_installed():
            return 12, "haproxy is not installed"
        h, changed = self.haproxy, False
        if h["config"] != p["config"]:
            if "\nfrontend " not in p["config"] or "\nbackend " not in p["config"]:
                return 1, "[ALERT] config : no frontend/backend: haproxy -c refuses the file"
            h["config"], changed = p["config"], True
        if h["enabled"] != "enabled":
            h["enabled"], changed = "enabled", True
        if h["active"] != "active":
            h["active"], changed = "active", True
        return 0, "changed" if changed else "unchanged"

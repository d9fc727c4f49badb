"""The lab registry in the simulated lab: what the `registry.hosts` node script leaves on a node, images pushed to a
registry stack's NodePort, and a containerd CRI pull on a node resolved the way containerd resolves it.

A pull of `<host:port>/<repo>:<tag>` (containerd's CRI image service):
- `config_path` comes from the node's effective config at the path of its layout (containerd docs/hosts.md, "CRI":
  1.x `plugins."io.containerd.grpc.v1.cri".registry`, 2.x `plugins."io.containerd.cri.v1.images".registry`). When it
  is empty, 2.x on Linux uses /etc/containerd/certs.d:/etc/docker/certs.d (plugins/cri/images/plugin.go, v2.2.7);
  1.x uses no hosts directory at all, so it goes to `https://<host:port>` (its default endpoint) and a plain-HTTP
  registry answers the TLS handshake with HTTP.
- in each root, the first of `<host>_<port>_`, `<host>:<port>`, `_default` holding a hosts.toml is used
  (docs/hosts.md, "Port Handling"); its `[host]` entries with the pull capability are tried in order, then `server`
  (default `https://<host:port>`).
- a name is looked up in the node's /etc/hosts (the lab has no DNS for labctl's names); an address reaches the
  registry when it is a running node of a cluster whose registry Service opens that NodePort and whose Deployment
  is ready.
The error text is containerd's: `failed to pull and unpack image "<ref>": failed to resolve reference "<ref>": ...`
(containerd#13206), with Go net/http's "http: server gave HTTP response to HTTPS client" for TLS to a plain-HTTP
server (containerd#4141).
"""

from __future__ import annotations

import ipaddress
import tomllib
import weakref
from typing import TYPE_CHECKING

from labctl.kube import hosts_address
from labctl.remote import facts as F
from tests.sim.kube_resources import APPS

if TYPE_CHECKING:
    from tests.sim.sim_cluster import SimCluster
    from tests.sim.sim_lab import SimLab
    from tests.sim.sim_node import SimNode

CONFIG_PATH_TABLES = {  # config version → the CRI registry table (the simulation's own table, not labctl's)
    2: ("io.containerd.grpc.v1.cri", "registry"),
    3: ("io.containerd.cri.v1.images", "registry"),
}
LINUX_DEFAULT_ROOTS = ["/etc/containerd/certs.d", "/etc/docker/certs.d"]  # 2.x, config_path empty, no mirrors

# what was pushed to each cluster's registry: "repo:tag" (on the registry's volume, so it outlives its pod)
_PUSHED: weakref.WeakKeyDictionary[SimCluster, set[str]] = weakref.WeakKeyDictionary()


class PullError(Exception):
    """A pull that fails, with containerd's message."""


class RegistryNode:
    """SimNode's handler of the `registry.hosts` script (mixed into SimNode)."""

    def _registry_hosts(self: SimNode, p, address):
        path = f"{p['dir']}/hosts.toml"
        want = (p["content"] + "\n").encode()

        def names_it(line: str) -> bool:
            return bool(line.split()[:1]) and not line.lstrip().startswith("#") \
                and p["name"] in line.split("#", 1)[0].split()[1:]

        lines = self.text(p["hosts_file"]).splitlines()
        in_place = [ln.split()[0] for ln in lines if names_it(ln)] == [p["address"]]  # wherever it stands
        hosts = "\n".join([ln for ln in lines if not names_it(ln)]
                          + [f"{p['address']} {p['name']} # labctl: lab registry of cluster {p['cluster']}"])
        differs = [what for what, same in ((path, self.files.get(path) == want), (p["hosts_file"], in_place))
                   if not same]
        if not differs:
            return 0, "unchanged"
        if not p["apply"]:
            return 0, "differs: " + " ".join(differs)
        self.files[path] = want
        if not in_place:
            self.facts["texts"][p["hosts_file"]] = hosts
        return 0, "changed: " + " ".join(differs)


def config_roots(node: SimNode) -> list[str]:
    """The hosts directories containerd on `node` reads, from its effective config ([] = none)."""
    ctd = node.facts["containerd"]
    config = tomllib.loads(ctd["config_dump"] or "")
    version = int(config.get("version", 1))
    table = config.get("plugins", {})
    for key in CONFIG_PATH_TABLES.get(version, ()):
        table = table.get(key, {}) if isinstance(table, dict) else {}
    value = table.get("config_path", "") if isinstance(table, dict) else ""
    if value:
        return value.split(":")
    major = int((ctd["version_output"].split()[2:3] or ["0"])[0].lstrip("v").split(".")[0])
    return LINUX_DEFAULT_ROOTS if major >= 2 and not table.get("mirrors") else []


def _hosts_toml(node: SimNode, roots: list[str], namespace: str) -> dict | None:
    host, _, port = namespace.partition(":")
    for root in roots:
        for name in ((f"{host}_{port}_", namespace) if port else (namespace,)) + ("_default",):
            data = node.files.get(f"{root}/{name}/hosts.toml")
            if data is not None:
                return tomllib.loads(data.decode())
    return None


def endpoints(node: SimNode, namespace: str) -> list[str]:
    """The URLs containerd on `node` tries for images of `namespace` (`host:port`), in order."""
    config = _hosts_toml(node, config_roots(node), namespace)
    if config is None:
        return [f"https://{namespace}"]
    hosts = [url for url, entry in (config.get("host") or {}).items()
             if "pull" in entry.get("capabilities", ["pull", "resolve", "push"])]
    return [*hosts, config.get("server", f"https://{namespace}")]


def _registry_at(lab: SimLab, address: str, port: int) -> SimCluster | None:
    """The cluster whose running node has `address` and whose registry answers on NodePort `port`."""
    for cluster in lab.clusters.values():
        if any(lab.address(n.name) == address for n in cluster.nodes) and serves(cluster, port):
            return cluster
    return None


def serves(cluster: SimCluster, port: int) -> bool:
    """A Service of the cluster opens NodePort `port` and the Deployment behind it (same namespace, selector) is
    ready."""
    for svc in cluster.store.list("api/v1", "services"):
        spec = svc.get("spec") or {}
        if not any(p.get("nodePort") == port for p in spec.get("ports") or []):
            continue
        selector = spec.get("selector") or {}
        for deploy in cluster.store.list(APPS, "deployments", svc["metadata"].get("namespace", "")):
            labels = ((deploy.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
            if selector and selector.items() <= labels.items() and (deploy.get("status") or {}).get("readyReplicas"):
                return True
    return False


def push(lab: SimLab, cluster: str, port: int, image: str) -> None:
    """`docker push <node>:<port>/<repo>:<tag>` from the host: stored in `cluster`'s registry while it serves."""
    sim_cluster = lab.clusters[cluster]
    if not serves(sim_cluster, port):
        raise PullError(f"push {image}: connect: connection refused")
    _PUSHED.setdefault(sim_cluster, set()).add(image)


def pull(lab: SimLab, node: str, ref: str) -> str:
    """`crictl pull <ref>` on `node`: the URL that served it, or PullError with containerd's message."""
    sim = lab.nodes[node]
    namespace, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    last = "no endpoint"
    for url in endpoints(sim, namespace):
        scheme, _, hostport = url.partition("://")
        host, _, port = hostport.partition(":")
        request = f'Head "{scheme}://{hostport}/v2/{repo}/manifests/{tag}"'
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            address = hosts_address(sim.text(F.HOSTS), host)
        if address is None:
            last = f"failed to do request: {request}: dial tcp: lookup {host}: no such host"
            continue
        registry = _registry_at(lab, address, int(port or (443 if scheme == "https" else 80)))
        if registry is None:
            last = f"failed to do request: {request}: dial tcp {address}:{port}: connect: connection refused"
        elif scheme == "https":
            last = f"failed to do request: {request}: http: server gave HTTP response to HTTPS client"
        elif f"{repo}:{tag}" not in _PUSHED.get(registry, set()):
            last = f"{ref}: not found"
        else:
            return url
    raise PullError(f'failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": {last}')

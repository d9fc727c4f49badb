"""What the lab looks like right now: VMs, SSH, Kubernetes nodes, Cilium, DNS, stacks, access URLs.

Read-only and quick. Everything is probed in parallel with short timeouts, so one dead node or API server costs one
timeout, not one per question: the VM list is one provider call, SSH is a TCP connect + banner (no login), and
each cluster's API is asked a handful of questions concurrently. `smoke` is the same data as a list of pass/fail
checks (JUnit for CI).
"""

from __future__ import annotations

import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .errors import LabctlError
from .kube import API_PORT

if TYPE_CHECKING:
    from .lab import LabSession
    from .model import Cluster

TIMEOUT = 5.0


@dataclass
class Probe:
    """One answer: ok, or not with the reason. `skipped` means there is nothing to ask yet (not an error)."""

    ok: bool
    detail: str
    skipped: bool = False


@dataclass
class NodeStatus:
    name: str
    role: str
    vm: str  # running / stopped / suspended / absent / unknown
    address: str | None
    ssh: Probe
    ready: Probe
    version: str = ""

    @property
    def healthy(self) -> bool:
        return self.vm == "running" and self.ssh.ok and self.ready.ok


@dataclass
class ClusterStatus:
    name: str
    nodes: list[NodeStatus]
    api: Probe
    cilium: Probe
    dns: Probe
    stacks: dict[str, Probe] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    kubeconfig: str = ""
    pods_not_ready: list[str] = field(default_factory=list)  # informational, as `kubectl get pods -A` would show
    events: list[str] = field(default_factory=list)  # the newest Warning events, newest last
    # clusters with several masters only (None otherwise): the host's endpoint (labctl's forwarder) and etcd
    endpoint: dict | None = None  # {"address": "127.0.0.1:<port>" | None, "running", "pid", "backends": [...]}
    etcd: dict | None = None  # {"ok", "detail", "skipped", "quorum", "leader", "asked", "error", "members": [...]}

    @property
    def healthy(self) -> bool:
        probes = [self.api, self.cilium, self.dns, *self.stacks.values()]
        etcd_ok = self.etcd is None or self.etcd["ok"] or self.etcd["skipped"]
        return all(n.healthy for n in self.nodes) and all(p.ok or p.skipped for p in probes) and etcd_ok

    def as_dict(self) -> dict:
        out = asdict(self)
        out["healthy"] = self.healthy
        for node, data in zip(self.nodes, out["nodes"], strict=True):
            data["healthy"] = node.healthy
        return out


def ssh_banner(host: str, port: int, timeout: float) -> Probe:
    """Is an SSH server answering? A TCP connect and the server's banner line; no login, nothing changed."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            banner = sock.recv(256).decode(errors="replace").strip()
    except TimeoutError:  # a frozen guest: the kernel accepts the connection, nothing answers on it
        return Probe(False, f"no answer within {timeout:g} s from SSH at {host}:{port}")
    except OSError as exc:
        return Probe(False, f"no SSH at {host}:{port} ({exc.strerror or exc})")
    if not banner.startswith("SSH-"):
        return Probe(False, f"{host}:{port} answered, but not with SSH")
    return Probe(True, banner.splitlines()[0])


def _guard(fn, *args) -> Probe:
    try:
        return fn(*args)
    except LabctlError as exc:
        return Probe(False, exc.message.splitlines()[0])


def _stacks(ctx, cluster: Cluster, kube, api: Probe) -> tuple[dict[str, Probe], dict[str, str]]:
    """Each declared stack's health (asked concurrently), and the URLs (with `{address}`) of each. Asked only once
    the API answered (`api`): a stack asks tens of questions, and against a hung API server those beyond the
    connection pool would each wait for an earlier one's timeout."""
    from . import stacks as S

    urls: dict[str, str] = {}

    def probe(name: str) -> Probe:
        try:
            stack = S.resolve(ctx.lab, cluster, name, ctx.state.root.parent)
            urls.update(stack.urls)
            if not api.ok:
                return Probe(False, "not asked: " + api.detail if not api.skipped else "not installed",
                             skipped=api.skipped)
            return Probe(*S.health(kube, stack))
        except LabctlError as exc:
            return Probe(False, exc.message.splitlines()[0])

    names = cluster.stack_names
    with ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="status-stack") as pool:
        probes = dict(zip(names, pool.map(probe, names), strict=True))
    return probes, urls


POD_LINES, EVENT_LINES = 20, 10


def pods_not_ready(pods: list[dict], limit: int = POD_LINES) -> list[str]:
    """"namespace/name: phase (reason)" for each pod that is neither Succeeded nor Ready (Pod condition Ready, the
    READY column of `kubectl get pods`), at most `limit`, sorted."""
    out = []
    for pod in pods:
        status, meta = pod.get("status") or {}, pod.get("metadata") or {}
        phase = status.get("phase", "Pending")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if phase == "Succeeded" or ready:
            continue
        waiting = [s["state"]["waiting"].get("reason", "") for s in status.get("containerStatuses") or []
                   if (s.get("state") or {}).get("waiting")]
        reason = next((r for r in waiting if r), status.get("reason", ""))
        out.append(f"{meta.get('namespace', '')}/{meta.get('name', '?')}: {phase}" + (f" ({reason})" if reason else ""))
    return sorted(out)[:limit]


def recent_warnings(events: list[dict], limit: int = EVENT_LINES) -> list[str]:
    """"time namespace/kind/name: reason: message" of the newest `limit` Warning events, oldest first (events.k8s.io
    and core Events carry the time in lastTimestamp, eventTime or the creation time)."""
    def when(e: dict) -> str:
        return e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp") or ""

    warnings = sorted((e for e in events if e.get("type") == "Warning"), key=when)[-limit:]
    return [f"{when(e)} {(e.get('metadata') or {}).get('namespace', '')}/{(e.get('involvedObject') or {}).get('kind', '')}/"
            f"{(e.get('involvedObject') or {}).get('name', '')}: {e.get('reason', '')}: {e.get('message', '')}".strip()
            for e in warnings]


def _pods_and_events(kube) -> tuple[list[str], list[str]]:
    """Two list requests once the API answered; a failure leaves the panels empty (they are information, the
    probes above them say whether the cluster is healthy)."""
    from .kube.client import parallel

    try:
        pods, events = parallel(lambda: kube.list("v1", "Pod", None), lambda: kube.list("v1", "Event", None))
    except LabctlError:
        return [], []
    return pods_not_ready(pods), recent_warnings(events)


def host_endpoint(ctx, cluster: Cluster, timeout: float) -> dict:
    """The host's endpoint of an HA cluster: where labctl's forwarder listens (recorded, whether it runs or not), its
    pid, and each master it forwards to with whether that accepts a TCP connection now (labctl/apiproxy.py)."""
    from . import apiproxy

    where = apiproxy.endpoint(ctx.state, cluster.name)
    pid = apiproxy.pid(ctx.state.root)
    return {"address": f"{where[0]}:{where[1]}" if where else None, "running": pid is not None,
            "pid": pid if pid and pid > 0 else None,
            "backends": apiproxy.backends_answering(ctx.state, cluster.name, min(timeout, 1.0))}


def etcd_members(ctx, cluster: Cluster, vms: dict, installed: bool, timeout: float) -> dict:
    """etcd as the first running control plane's etcdctl sees it (one SSH command, labctl/etcd.py): members with
    health and the leader. ok = quorum and every member healthy."""
    from . import etcd

    empty = {"quorum": False, "leader": None, "asked": None, "error": "", "members": []}
    if not installed:
        return {"ok": False, "detail": "not installed", "skipped": True, **empty}
    running = [m for m in cluster.masters if (vm := vms.get(m.name)) is not None and vm.running]
    try:
        view = etcd.ask(ctx, cluster, timeout, masters=running)
    except LabctlError as exc:
        return {"ok": False, "detail": exc.message.splitlines()[0], "skipped": False, **empty}
    ok = view.quorum and all(m.healthy for m in view.members)
    return {"ok": ok, "detail": view.describe(), "skipped": False, **view.as_dict()}


def _cluster(ctx, cluster: Cluster, vms: dict, timeout: float, pool) -> ClusterStatus:
    from .kube import highly_available, kubeconfig

    provider = ctx.provider
    kube = ctx.kube(cluster)
    have_kubeconfig = kubeconfig.read(ctx.state, cluster.name) is not None

    def node_probe(node):
        vm = vms.get(node.name)
        state = vm.state if vm else "absent"
        try:
            # once per run (Context.address; the list above saw it running, so no `tart get` first), and handed to
            # ssh_address, which would otherwise ask tart again
            address = ctx.address(node, running=True) if vm and vm.running else None
        except LabctlError as exc:  # e.g. two nodes report one address (a stale lease): say so on this node's row
            return node, state, None, Probe(False, exc.message.splitlines()[0])
        if address:
            host, port = provider.ssh_address(node, address)
            ssh = ssh_banner(host, port, timeout)
        else:
            ssh = Probe(False, "VM not running" if vm else "no VM: `labctl install` creates it")
        return node, state, address, ssh

    def api_nodes():
        if not have_kubeconfig:
            return Probe(False, "not installed: no kubeconfig yet", skipped=True), {}
        try:
            infos = {n.name: n for n in kube.nodes()}
        except LabctlError as exc:
            return Probe(False, exc.message.splitlines()[0]), {}
        return Probe(True, f"{len(infos)} nodes registered"), infos

    def workloads(*checks):
        if not have_kubeconfig:
            return Probe(False, "not installed", skipped=True)
        details = []
        for method, ns, name in checks:
            readiness = getattr(kube, method)(ns, name)
            if not readiness:
                return Probe(False, readiness.detail)
            details.append(readiness.detail)
        return Probe(True, "; ".join(details))

    cilium_checks = [("daemonset_ready", "kube-system", "cilium"), ("deployment_ready", "kube-system", "cilium-operator")]
    if cluster.cilium.hubble:
        cilium_checks += [("deployment_ready", "kube-system", "hubble-relay")]
    futures = {
        "nodes": [pool.submit(node_probe, n) for n in cluster.nodes],
        "api": pool.submit(api_nodes),
        "cilium": pool.submit(_guard, workloads, *cilium_checks),
        "dns": pool.submit(_guard, workloads, ("deployment_ready", "kube-system", "coredns")),
    }
    if ha := highly_available(cluster):
        futures["endpoint"] = pool.submit(host_endpoint, ctx, cluster, timeout)
        futures["etcd"] = pool.submit(etcd_members, ctx, cluster, vms, have_kubeconfig, timeout)
    api, infos = futures["api"].result()
    stacks, stack_urls = _stacks(ctx, cluster, kube, api)
    pods, events = _pods_and_events(kube) if api.ok else ([], [])
    nodes = []
    for fut in futures["nodes"]:
        node, state, address, ssh = fut.result()
        info = infos.get(node.name)
        if info is not None:
            ready = Probe(info.ready, "Ready" if info.ready else f"NotReady {info.ready_reason}".strip())
        elif api.ok:
            ready = Probe(False, "not registered in the API")
        else:
            ready = Probe(False, api.detail, skipped=api.skipped)
        nodes.append(NodeStatus(node.name, node.role, state, address, ssh, ready,
                                info.kubelet_version if info else ""))
    running = next((n for n in nodes if n.address), None)
    # NodePorts answer on every node; a worker's address is the one users are told (the predecessor's habit too)
    worker = next((n for n in nodes if n.address and n.role == "worker"), running)
    wanted = {}
    if running and cluster.cilium.hubble:
        wanted["hubble-ui"] = (running, f"http://{{address}}:{cluster.cilium.hubble_ui_node_port}")
    if running:
        wanted["api"] = (running, f"https://{{address}}:{API_PORT}")
    if worker:
        wanted.update({name: (worker, url) for name, url in stack_urls.items()})
    urls = {name: url for name, (node, template) in wanted.items()
            if (url := host_url(provider, node.name, node.address, template)) is not None}
    if ha and (where := futures["endpoint"].result()["address"]):
        urls["api"] = f"https://{where}"  # the host's endpoint: the kubeconfig names it too
    return ClusterStatus(
        cluster.name, nodes, api, futures["cilium"].result(), futures["dns"].result(), stacks, urls,
        str(kubeconfig.cluster_path(ctx.state, cluster.name)) if have_kubeconfig else "", pods, events,
        futures["endpoint"].result() if ha else None, futures["etcd"].result() if ha else None,
    )


URL_ADDRESS = re.compile(r"\{address\}(?::(\d+))?")


def host_url(provider, node: str, address: str, template: str) -> str | None:
    """A stack URL template ("http://{address}:30800/") as this machine reaches it: `{address}:PORT` becomes the
    provider's host end of that port on `node` (Provider.host_endpoint: the node's address and the port, or
    127.0.0.1 and a forwarded port under QEMU's network lab). None when the port is not reachable from here."""
    match = URL_ADDRESS.search(template)
    if match is None:
        return template
    if match.group(1) is None:
        return template.replace("{address}", address)
    try:
        host, port = provider.host_endpoint(node, int(match.group(1)), address)
    except LabctlError:
        return None
    return template[:match.start()] + f"{host}:{port}" + template[match.end():]


def collect(lab: LabSession, clusters: list[str] | None = None, timeout: float = TIMEOUT) -> list[ClusterStatus]:
    from .lab import chosen_clusters

    names = chosen_clusters(lab, clusters or [])
    ctx = lab.context(request_timeout=timeout, connect_timeout=timeout, answer_timeout=timeout, kube_retries=0)
    try:
        vms = ctx.provider.list()
        chosen = [lab.model.cluster(name) for name in names]
        # workers: per cluster, one per node probe plus the API questions, so nothing waits behind a dead node
        width = sum(len(c.nodes) + 6 for c in chosen)  # +6: API, Cilium, DNS, endpoint, etcd, slack
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="status") as pool:
            outer = ThreadPoolExecutor(max_workers=len(chosen) or 1, thread_name_prefix="status-cluster")
            with outer:
                return list(outer.map(lambda c: _cluster(ctx, c, vms, timeout, pool), chosen))
    finally:
        ctx.close()


def snapshot(lab: LabSession, clusters: list[str] | None = None, timeout: float = TIMEOUT) -> dict:
    """What `labctl status --json` prints and the dashboard shows: {"healthy": bool, "clusters": [ClusterStatus
    .as_dict(), ...]}, each node's dict also carrying its declared size from clusters.json ("cpu" vCPUs, "memory"
    MiB, "disk" GB). Raises what `collect` raises (LabctlError: e.g. an unknown cluster)."""
    statuses = collect(lab, clusters, timeout)
    out = {"healthy": all(c.healthy for c in statuses), "clusters": [c.as_dict() for c in statuses]}
    for cluster in out["clusters"]:
        declared = {n.name: n for n in lab.model.cluster(cluster["name"]).nodes}
        for node in cluster["nodes"]:
            spec = declared[node["name"]]
            node.update(cpu=spec.cpu, memory=spec.memory, disk=spec.disk)
    return out


def next_steps(lab: LabSession, clusters: list[str] | None = None, urls: bool = True) -> list[dict]:
    """What a user does with the clusters an install or boot just brought up, as kind tells after `create cluster`:
    per chosen cluster that has a kubeconfig, {"cluster", "context" (labctl-<cluster>), "kubeconfig" (its own file),
    "urls" (name → URL as `status` shows them)}. `urls`: ask for them with one status probe (short timeouts; a probe
    that fails leaves them out rather than failing the command that succeeded); False: {} and no probe."""
    from .kube import kubeconfig
    from .lab import chosen_clusters

    installed = [name for name in chosen_clusters(lab, clusters or [])
                 if kubeconfig.read(lab.state, name) is not None]  # a boot of a lab never installed: nothing to reach
    found = {}
    if urls and installed:
        try:
            found = {c.name: dict(c.urls) for c in collect(lab, installed)}
        except LabctlError:
            pass
    return [{"cluster": name, "context": kubeconfig.context_name(name),
             "kubeconfig": str(kubeconfig.cluster_path(lab.state, name)), "urls": found.get(name, {})}
            for name in installed]


@dataclass
class SmokeCheck:
    cluster: str
    name: str
    ok: bool
    detail: str
    skipped: bool = False


def smoke_checks(statuses: list[ClusterStatus]) -> list[SmokeCheck]:
    """CI's view: one check per question a healthy cluster must answer yes to."""
    out = []
    for c in statuses:
        ready = [n for n in c.nodes if n.ready.ok]
        out += [
            SmokeCheck(c.name, "api-reachable", c.api.ok, c.api.detail),
            SmokeCheck(c.name, "nodes-ready", len(ready) == len(c.nodes),
                       f"{len(ready)}/{len(c.nodes)} Ready" + "".join(
                           f"; {n.name}: {n.ready.detail}" for n in c.nodes if not n.ready.ok)),
            SmokeCheck(c.name, "cilium-ready", c.cilium.ok, c.cilium.detail),
            SmokeCheck(c.name, "coredns-available", c.dns.ok, c.dns.detail),
        ]
        out += [SmokeCheck(c.name, f"stack-{name}", p.ok, p.detail, p.skipped) for name, p in c.stacks.items()]
    return out


def junit_xml(checks: list[SmokeCheck], elapsed: float) -> str:
    """JUnit XML: one testsuite per cluster, one testcase per check (what CI systems render)."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="labctl smoke", tests=str(len(checks)),
                      failures=str(sum(1 for c in checks if not c.ok and not c.skipped)), time=f"{elapsed:.3f}")
    for cluster in dict.fromkeys(c.cluster for c in checks):
        mine = [c for c in checks if c.cluster == cluster]
        suite = ET.SubElement(root, "testsuite", name=cluster, tests=str(len(mine)),
                              failures=str(sum(1 for c in mine if not c.ok and not c.skipped)),
                              skipped=str(sum(1 for c in mine if c.skipped)))
        for check in mine:
            case = ET.SubElement(suite, "testcase", classname=f"labctl.{cluster}", name=check.name)
            if check.skipped:
                ET.SubElement(case, "skipped", message=check.detail)
            elif not check.ok:
                ET.SubElement(case, "failure", message=check.detail).text = check.detail
            else:
                ET.SubElement(case, "system-out").text = check.detail
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"

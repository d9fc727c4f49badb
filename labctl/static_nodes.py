"""Static nodes: existing machines (`"provider": "static"` on a node) that labctl reaches over SSH at `address` and
never creates, resizes, powers off or deletes (docs/byo-nodes.md).

Here: what clusters.json must say about them (static_problems), the readiness check before they join
(readiness, run by phases/preflight.py), and what `shutdown` and `destroy` do to them instead of stopping or
deleting a VM (shutdown_static, destroy_static). Their provider is labctl/providers/static.py.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

# only what validation needs at import time: clusters.json is validated without the SSH and Kubernetes modules
from .errors import CommandError, Problem, ProviderError, TransportError

# The seed's node-ready check (seeds/000, node_ready_check.sh): a machine is too busy to join when its 1-minute load
# per CPU is above 0.8, or when less than 20% of its memory is available (MemAvailable / MemTotal).
MAX_LOAD_PER_CPU = 0.8
MIN_AVAILABLE_MEMORY = 0.20
POWER_OFF_SECONDS = 120  # `shutdown --power-off`: how long a static machine may take to go down (as a VM's grace)
REACH_SECONDS = 5  # how long the node may take to open a TCP connection to the API server
API_PORT = 6443  # kube-apiserver's bindPort (reference/k8s-bootstrap.md §3)

# Networks on which a machine outside the host cannot reach the VMs (nor they it): Tart's shared NAT and softnet
# (reference/tart-cli.md), QEMU's user-mode NAT and its host-loopback `lab` segment (labctl/providers/qemu_net.py).
REACHABLE_NETWORK = {"tart": ("bridged", "provider.tart.network", '"bridged" (with bridge_interface)'),
                     "qemu": ("bridge", "provider.qemu.network", '"bridge"')}
# Node fields that only mean something on a static node.
STATIC_FIELDS = ("address", "ssh_user", "ssh_port", "ssh_key")


# ---- validation ------------------------------------------------------------------------------------------------

def static_problems(clusters: list, provider_type: str, provider: dict) -> list[Problem]:
    """clusters.json's static-node rules, on the raw (JSON) clusters: a VM node has cpu and memory; a static node
    has an `address`, no two static nodes share one; the STATIC_FIELDS only on static nodes; a cluster that mixes
    static nodes with VMs only on a network where they reach each other (REACHABLE_NETWORK). Returns the problems."""
    problems: list[Problem] = []
    addresses: dict[str, str] = {}
    settings = provider.get(provider_type) if isinstance(provider.get(provider_type), dict) else {}
    network = settings.get("network", "shared" if provider_type == "tart" else "user")
    for ci, cluster in enumerate(clusters):
        nodes = cluster.get("nodes") if isinstance(cluster, dict) and isinstance(cluster.get("nodes"), list) else []
        vms = [n for n in nodes if isinstance(n, dict) and n.get("provider") != "static"]
        for ni, node in enumerate(nodes):
            if not isinstance(node, dict):
                continue
            npath = f"clusters[{ci}].nodes[{ni}]"
            if node.get("provider") != "static":
                problems += [Problem(f"{npath}.{field}", "Field required: a VM needs its size (only a node with "
                                     '"provider": "static" leaves it out)') for field in ("cpu", "memory")
                             if node.get(field) is None]
                problems += [Problem(f"{npath}.{field}", f'{field} only applies to a node with "provider": "static" '
                                     "(an existing machine); a VM's comes from the lab's provider")
                             for field in STATIC_FIELDS if node.get(field) is not None]
                continue
            address = node.get("address")
            if not isinstance(address, str) or not address.strip():
                if address is None or isinstance(address, str):  # another type: the model's own error names it
                    problems.append(Problem(f"{npath}.address", 'a node with "provider": "static" needs `address`: '
                                            "the machine's IPv4 address or DNS name, where labctl reaches it over SSH"))
                continue
            if not _address_ok(address):
                problems.append(Problem(f"{npath}.address", f"{address[:60]!r} is not an IP address or DNS name "
                                        "(no scheme, port or path: a port goes in `ssh_port`)"))
                continue
            key = _address_key(address)
            if key in addresses:
                problems.append(Problem(f"{npath}.address", f"{address!r} is already the address of {addresses[key]}; "
                                        "each static node is its own machine"))
            addresses.setdefault(key, npath)
            want = REACHABLE_NETWORK.get(provider_type)
            if vms and want and network != want[0]:
                problems.append(Problem(f"{npath}.provider", f"a static machine cannot join cluster "
                                        f"{cluster.get('name')!r}: its VMs are on the {network!r} network, which "
                                        f"machines outside this host cannot reach; set {want[1]} to {want[2]} so "
                                        "the VMs and the machine share a LAN (docs/byo-nodes.md)"))
    return problems


# A host name as RFC 1123 §2.1 allows it: dot-separated labels of letters, digits and '-', 1-63 characters each, not
# starting or ending with '-'; at most 253 characters (RFC 1035 §2.3.4), a trailing dot allowed.
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?$")


def _address_ok(address: str) -> bool:
    """`address` is an IP address or a DNS host name (what SSH connects to); False for `host:port`, URLs, spaces."""
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return len(address) <= 253 and bool(_HOSTNAME.match(address))


def _address_key(address: str) -> str:
    """The same address however written (an IPv4 address's canonical form, a host name's lowercase)."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        return address.strip().lower().rstrip(".")


# ---- readiness before join --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Readiness:
    failed: list[str]  # each failed check, in words
    passed: list[str]

    @property
    def ready(self) -> bool:
        return not self.failed


def readiness(ctx, cluster, node) -> Readiness:
    """The seed's node-ready check on a machine about to join: CPU load, available memory, the container runtime
    (containerd running with its CRI), and the control plane's API port reachable FROM the node (a TCP connection
    to the first control plane's address, port 6443). Reads only (facts and one probe script); each check that
    fails is named with what was found. Raises TransportError/FactsError when the node cannot be asked."""
    facts = ctx.facts(node.name, refresh=True)  # load and memory change by the minute: never a cached answer
    failed, passed = [], []
    cpus = facts.cpus or 1
    if facts.load:
        per_cpu = facts.load[0] / cpus
        (failed if per_cpu > MAX_LOAD_PER_CPU else passed).append(
            f"CPU load {facts.load[0]:.2f} on {cpus} CPUs ({per_cpu:.2f} per CPU, at most {MAX_LOAD_PER_CPU})")
    else:
        failed.append("CPU load unknown (no /proc/loadavg)")
    total, available = facts.memory.total_kb, facts.memory.available_kb
    if total and available is not None:
        share = available / total
        (failed if share < MIN_AVAILABLE_MEMORY else passed).append(
            f"memory {available // 1024} of {total // 1024} MiB available ({share:.0%}, at least "
            f"{MIN_AVAILABLE_MEMORY:.0%})")
    else:
        failed.append("available memory unknown (no MemAvailable in /proc/meminfo)")
    ctd = facts.containerd
    if not ctd.installed:
        failed.append("container runtime missing: containerd is not installed")
    elif not ctd.service.running:
        failed.append(f"container runtime not running: containerd is {ctd.service.active or 'not known to systemd'}")
    elif facts.cri_disabled:
        failed.append("container runtime without its CRI: containerd's config disables the cri plugin")
    else:
        passed.append("containerd running")
    master = cluster.masters[0]
    if master.name != node.name:
        problem = _reach(ctx, node, ctx.address(master) or "")
        (failed if problem else passed).append(problem or f"the API server {master.name}:{API_PORT} reachable")
    return Readiness(failed, passed)


def _reach(ctx, node, host: str) -> str | None:
    """None when `node` opens a TCP connection to host:6443 within REACH_SECONDS; else what failed."""
    if not host:
        return f"the control plane has no address yet, so {node.name} cannot reach it on port {API_PORT}"
    from .render import script

    run = script("preflight.reach", "node/reach.sh.j2", host=host, port=API_PORT, seconds=REACH_SECONDS)
    result = ctx.transport(node.name).run(run, timeout=REACH_SECONDS + 30, check=False)
    if result.ok:
        return None
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    return (f"the control plane {host}:{API_PORT} is not reachable from {node.name} (exit {result.rc}: {tail[0]}); "
            "check the firewall and routes between them")


# ---- shutdown and destroy -----------------------------------------------------------------------------------------

def api(ctx, cluster) -> Any | None:
    """The cluster's API facade, or None when labctl has no kubeconfig for it (never installed, or destroyed)."""
    from .kube import kubeconfig

    return ctx.kube(cluster) if kubeconfig.read(ctx.state, cluster.name) else None


def shutdown_check(ctx, cluster, node) -> tuple[bool, str]:
    """(done, detail) for `shutdown` of a static node: cordoned and drained (or its cluster's API is already down);
    with --power-off also no longer answering SSH."""
    info = _node_info(_api_or_none(ctx, cluster), node)
    drained = info is None or info.unschedulable
    if ctx.options.get("power_off"):
        running = ctx.provider.get(node.name).running
        return drained and not running, "drained and powered off" if drained and not running else \
            "answers SSH: drain it and power it off from inside (--power-off)"
    if drained:
        return True, ("cordoned" if info is not None else "not in a reachable cluster") + \
            "; a static machine is left running (--power-off powers it off)"
    return False, "schedulable: cordon and drain it (a static machine is not powered off)"


def shutdown_apply(ctx, cluster, node) -> str:
    """Cordon and drain the static node (never its power, unless --power-off: then an in-guest power-off)."""
    from phases.shutdown import poweroff_in_guest

    kube = _api_or_none(ctx, cluster)
    done = []
    if _node_info(kube, node) is not None:
        done.append(f"cordoned and drained ({kube.drain(node.name)} pods evicted)")
    if ctx.options.get("power_off"):
        asked = poweroff_in_guest(ctx, node.name)
        if asked and not _gone_quiet(ctx, node, ctx.options.get("grace_seconds", POWER_OFF_SECONDS)):
            raise ProviderError(f"{node.name}: asked to power off, but its SSH port still answers after "
                                f"{ctx.options.get('grace_seconds', POWER_OFF_SECONDS)} s",
                                hint=f"look at {node.name} ({node.address}); labctl cannot pull its plug")
        done.append("powered off from inside" if asked else "could not be asked to power off (no SSH)")
    else:
        done.append("left running (static machine)")
    return ", ".join(done)


def _gone_quiet(ctx, node, seconds: float) -> bool:
    """Wait up to `seconds` for a machine asked to power off to stop answering SSH; True once it has."""
    import time

    deadline = time.monotonic() + seconds
    while ctx.provider.get(node.name).running:
        if time.monotonic() > deadline:
            return False
        time.sleep(1)  # a machine going down: nothing to be told about but its port closing
    return True


def destroy_check(ctx, cluster, node) -> tuple[bool, str]:
    """(done, detail) for `destroy` of a static node: out of the cluster; with --reset-static also kubeadm reset."""
    todo = []
    if _node_info(_api_or_none(ctx, cluster), node) is not None:
        todo.append("drain it and delete its Node")
    if ctx.options.get("reset_static") and _kubeadm_ran(ctx, node):
        todo.append("kubeadm reset -f (--reset-static)")
    if todo:
        return False, "; ".join(todo) + "; the machine itself is left alone"
    return True, "not in the cluster; the static machine is left alone"


def destroy_apply(ctx, cluster, node) -> str:
    """Drain the node and delete its Node object; `kubeadm reset -f` only with --reset-static; never the machine."""
    from .render import script

    done = []
    kube = _api_or_none(ctx, cluster)
    if _node_info(kube, node) is not None:
        evicted = kube.drain(node.name)
        kube.delete_node(node.name)
        done.append(f"drained ({evicted} pods), Node deleted")
    if ctx.options.get("reset_static") and _kubeadm_ran(ctx, node):
        ctx.transport(node.name).run(script("destroy.kubeadm-reset", "node/kubeadm-reset.sh.j2"), sudo=True,
                                     timeout=300)
        ctx.invalidate(node.name)
        done.append("kubeadm reset -f")
    return ", ".join(done + ["machine left running"])


def _api_or_none(ctx, cluster):
    """The API when it answers; None when there is none (no kubeconfig) or it is gone (its VMs deleted first)."""
    from .kube.client import KubeError

    kube = api(ctx, cluster)
    if kube is None:
        return None
    try:
        kube.node(cluster.masters[0].name)
    except (KubeError, TransportError) as exc:
        ctx.log(cluster.masters[0].name, f"API not reachable ({exc}); static nodes are not drained")
        return None
    return kube


def _node_info(kube, node):
    return kube.node(node.name) if kube is not None else None


def _kubeadm_ran(ctx, node) -> bool:
    try:
        return ctx.facts(node.name).kubeadm_ran
    except (TransportError, CommandError) as exc:
        raise TransportError(node.name, f"cannot look at the static machine to reset it: {exc.message}",
                             hint="make it reachable over SSH, or run `sudo kubeadm reset -f` on it yourself") from None


# ---- doctor ---------------------------------------------------------------------------------------------------------

# The node scripts install with apt from the pkgs.k8s.io Debian repository (templates/node/kubepkgs.sh.j2,
# reference/k8s-bootstrap.md §2): Debian and its derivatives only.
SUPPORTED_OS = ("ubuntu", "debian")


def doctor_findings(lab, config) -> list:
    """`labctl doctor` for static machines: each answers SSH, sudo works without a prompt, and its OS is one the node
    scripts support — all from one run of the read-only facts probe (bounded like `status`). Returns Findings."""
    from .context import Context, lab_dir
    from .doctor import Finding
    from .remote.ssh import PROBE_TIMEOUT
    from .state import LabState

    static = [node for _, node in lab.nodes if node.static]
    if not static:
        return []
    ctx = Context(lab, LabState(lab_dir(config) / ".labctl"),
                  options={"connect_timeout": PROBE_TIMEOUT, "answer_timeout": PROBE_TIMEOUT})
    out = []
    try:
        for node in static:
            name = f"static {node.name}"
            try:
                facts = ctx.facts(node.name)
            except (TransportError, CommandError) as exc:
                out.append(Finding(name, "fail", f"{node.address}: {exc.message.splitlines()[0]}",
                                   exc.hint or "check address, ssh_port, ssh_user and the first-contact key or "
                                   "password in clusters.json"))
                continue
            os_id = facts.os.id or "unknown"
            if facts.uid != 0:
                out.append(Finding(name, "fail", f"{node.address}: sudo did not make the facts probe root",
                                   f"give {node.ssh_user or lab.ssh_user} sudo on {node.name} (passwordless, or "
                                   "with ssh_password)"))
            elif os_id not in SUPPORTED_OS:
                out.append(Finding(name, "fail", f"{node.address}: {facts.os.pretty_name or os_id} is not supported",
                                   f"labctl's node scripts need {' or '.join(SUPPORTED_OS)} (apt, pkgs.k8s.io)"))
            else:
                out.append(Finding(name, "ok", f"{node.address}: SSH and sudo work; {facts.os.pretty_name or os_id}, "
                                   f"{facts.cpus} CPUs, {(facts.memory.total_kb or 0) // 1024} MiB"))
    finally:
        ctx.close()
    return out

"""init: `kubeadm init` on each cluster's first control plane, and a kubeconfig for it on this machine.

check: the control plane is initialised (kubeadm's own markers, reference §3: manifests/kube-apiserver.yaml AND
       admin.conf), its /etc/hosts sends the stable API name to it (to 127.0.0.1 in an HA cluster, docs/ha.md), and
       .labctl/kubeconfig/<cluster>.yaml points at its current address and trusts its CA, as do the copies `labctl kubeconfig --merge` put in the user's files.
apply: a node without a control plane gets the hosts line, the rendered config and `kubeadm init`. There is no
       `kubeadm reset` anywhere: a node where kubeadm ran but left no complete control plane is reported, not wiped.
       An initialised control plane whose address changed (DHCP after a reboot) is repaired in place instead
       (`repair_addresses`, which `boot` uses too). Then admin.conf becomes the host's kubeconfig and the API has
       to answer through it.
"""

from __future__ import annotations

from labctl import apiproxy, etcd
from labctl.engine import Check, Phase, Target
from labctl.errors import LabctlError, StepError
from labctl.kube import (
    API_PORT,
    LOCAL_API,
    AddressProbe,
    Repair,
    balancer,
    endpoint_address,
    endpoint_host,
    highly_available,
    host_api,
    hosts_address,
    kubeconfig,
    node_address,
    plan_repair,
)
from labctl.remote.facts import ADMIN_CONF, HOSTS, HOSTS_LOCK, KUBEADM_FLAGS, MANIFESTS
from labctl.render import render, script

from . import cni

INIT_CONFIG = "/etc/labctl/kubeadm-init.yaml"  # kept: the address repair regenerates certificates from it
CA_CERT = "/etc/kubernetes/pki/ca.crt"
APISERVER_CERT = "/etc/kubernetes/pki/apiserver.crt"
CRI_SOCKET = "unix:///var/run/containerd/containerd.sock"
INIT_TIMEOUT = 1200  # image pulls on a first boot plus kubeadm's own waits for the control plane
API_WAIT = 300


def init_params(lab, cluster, address: str, node: str | None = None) -> dict:
    """`node`: the control plane the config is for (the first one, where `kubeadm init` runs, by default; another
    master when its address repair re-issues its certificates from it)."""
    return {
        "cluster": cluster.name,
        "node": node or cluster.masters[0].name,
        "address": address,
        "port": API_PORT,
        "endpoint_host": endpoint_host(cluster.name),
        "kubernetes_version": lab.versions.kubernetes,
        "pod_cidr": cluster.pod_cidr,
        "service_cidr": cluster.service_cidr,
        "cri_socket": CRI_SOCKET,
    }


def init_config(lab, cluster, address: str, host_sans: tuple[str, ...] = (), node: str | None = None) -> str:
    """kubeadm's init configuration. `host_sans`: more IP SANs of the API server certificate, for where this machine
    reaches the API when that is not `address` (QEMU network lab: 127.0.0.1, see host_sans()). `node`: see
    init_params."""
    sans = [san for san in dict.fromkeys(host_sans) if san != address]
    return render("kubeadm/init.yaml.j2", **init_params(lab, cluster, address, node), host_sans=sans)


def host_sans(ctx, cluster, address: str) -> tuple[str, ...]:
    """The host end of the API (Provider.host_endpoint) as a certificate SAN: the kubeconfig on this machine names
    it, and the client verifies the server certificate against that name."""
    return (host_api(ctx, cluster, address)[0],)


def hosts_entry(cluster, api_address: str):
    """The script that points the stable API name at `api_address` on whichever node runs it: the first control
    plane's address, or 127.0.0.1 on the nodes of an HA cluster (docs/ha.md)."""
    return script("endpoint.hosts", "cluster/endpoint-hosts.sh.j2", cluster=cluster.name,
                  name=endpoint_host(cluster.name), address=api_address, hosts_file=HOSTS, hosts_lock=HOSTS_LOCK)


def address_probe(cluster):
    """The read-only script that prints which addresses a node's kubeadm files and /etc/hosts hold."""
    return script("repair.probe", "cluster/address-probe.sh.j2", endpoint_host=endpoint_host(cluster.name),
                  kubeadm_flags=KUBEADM_FLAGS, apiserver_manifest=MANIFESTS[0], apiserver_cert=APISERVER_CERT,
                  hosts_file=HOSTS)


def kubeconfig_problem(ctx, cluster, address: str) -> str | None:
    """Why the host's kubeconfig for `cluster` cannot be used as it is, or None."""
    try:
        local = kubeconfig.read(ctx.state, cluster.name)
    except kubeconfig.DamagedKubeconfig as exc:
        return exc.message  # fetched anew from the control plane by apply
    if local is None:
        return "no kubeconfig on this machine yet"
    merged = kubeconfig.merged_problem(ctx.state)
    if merged:
        return merged  # writing this cluster's kubeconfig rebuilds merged.yaml from the clusters' files
    if proxy := apiproxy.problem(ctx, cluster):  # an HA cluster: the host reaches it through labctl's forwarder
        return proxy
    want, name = apiproxy.host_server(ctx, cluster, address)
    if kubeconfig.server(local) != want:
        return f"the kubeconfig points at {kubeconfig.server(local)}, the control plane answers at {want}"
    if kubeconfig.tls_server_name(local) != name:
        return f"the kubeconfig verifies the API certificate as {kubeconfig.tls_server_name(local) or 'its address'}, " \
               f"want {name or 'its address'}"
    ca = ctx.transport(cluster.masters[0].name).get(CA_CERT, sudo=True)
    if not kubeconfig.same_pem(ca, kubeconfig.ca_pem(local)):
        return "the kubeconfig on this machine is for another cluster (its CA differs)"
    return None


def merged_problem(ctx, cluster) -> str | None:
    """Which user kubeconfigs (`labctl kubeconfig --merge`) still hold an old copy of the cluster's entries, or None."""
    stale = kubeconfig.stale_merged(ctx.state, cluster.name)
    if not stale:
        return None
    return f"context {kubeconfig.context_name(cluster.name)} in {', '.join(map(str, stale))} is out of date"


def fetch_kubeconfig(ctx, cluster, address: str) -> str:
    admin = ctx.transport(cluster.masters[0].name).get(ADMIN_CONF, sudo=True)
    server, name = apiproxy.host_server(ctx, cluster, address)
    path = kubeconfig.write(ctx.state, cluster.name, kubeconfig.from_admin_conf(admin, cluster.name, server, name))
    return str(path)


def pending_repairs(ctx, cluster, only: list[str] | None = None) -> list[Repair]:
    """Read-only: what `repair_addresses` would change (probes every node of `cluster`, or those in `only`).

    The first control plane's address is always needed (the hosts lines point at it). A node that cannot be reached
    now is skipped when it is not the first control plane: its `join` check sees the stale hosts line or node IP
    and repairs just that node later.
    """
    first = cluster.masters[0]
    addresses = {first.name: node_address(ctx, first)}
    probes: dict[str, AddressProbe] = {}
    probe = address_probe(cluster)
    for node in cluster.nodes:
        if only is not None and node.name not in only:
            continue
        try:
            addresses[node.name] = node_address(ctx, node)
            probes[node.name] = AddressProbe.parse(ctx.transport(node.name).run(probe, sudo=True, timeout=60).stdout)
        except LabctlError as exc:
            if node.name == first.name:
                raise
            ctx.note(f"{node.name}: address check skipped ({exc}); its join step repairs it later")
    return plan_repair(cluster, addresses, probes, _peers(ctx, cluster, probes))


def _peers(ctx, cluster, probes: dict[str, AddressProbe]) -> dict[str, str] | None:
    """HA clusters: member name → the address of its etcd peer URL, from a member with quorum (None without one).
    Read whenever a control plane was probed: a member whose files were repaired but whose peer URL was not (an
    interrupted repair) shows only here."""
    if not highly_available(cluster) or not any(p.advertised for p in probes.values()):
        return None
    try:
        view = etcd.with_quorum(ctx, cluster)
    except LabctlError as exc:
        ctx.note(f"{cluster.name}: {exc.message.splitlines()[0]}")
        return None
    return {m.name: m.address for m in view.members}


def repair_addresses(ctx, cluster, only: list[str] | None = None) -> list[str]:
    """Bring the kubeadm files and hosts lines of `cluster` (or of the nodes in `only`) in line with the nodes'
    current addresses. Returns what was changed, one line per action."""
    repairs = []
    for repair in pending_repairs(ctx, cluster, only):
        if (repair.kind == "hosts" and repair.new == LOCAL_API and (only is None or repair.node not in only)
                and ctx.node(repair.node)[1].role == "worker"):
            # an HA cluster's worker moves to its local haproxy only in its own join step, which runs after its
            # kubepkgs (which installs haproxy); init runs beside the workers' kubepkgs (a grown cluster)
            ctx.note(f"{repair.node}: the API endpoint moves to its local haproxy in its join step")
            continue
        repairs.append(repair)
    done: list[str] = []  # what the repairs did beyond their own line (etcd recovery)
    forcing = {r.node for r in repairs if r.kind == "etcd-force"}
    if any(r.kind == "hosts" for r in repairs):
        cni.mark_restart(ctx, cluster, True)  # before the change: a run stopped after it still restarts Cilium
    for repair in repairs:
        transport = ctx.transport(repair.node)
        ctx.note(f"repairing {repair}")
        if repair.kind == "hosts":
            if repair.new == LOCAL_API and ctx.node(repair.node)[1].role == "worker":
                # an HA cluster's worker: its local balancer must answer at 127.0.0.1 before the name points there
                balancer.ensure(ctx, cluster, ctx.node(repair.node)[1])
            transport.run(hosts_entry(cluster, repair.new), sudo=True, timeout=60)
        elif repair.kind == "node-ip":
            run = script("repair.node-ip", "cluster/repair-node-ip.sh.j2", node=repair.node, old=repair.old,
                         new=repair.new)
            transport.run(run, sudo=True, timeout=120)
        elif repair.kind == "etcd-peer":
            # on another member with quorum, before this member restarts with the new address (etcd docs, "Update
            # advertise peer URLs"): afterwards the others reach it there
            etcd.update_peer(ctx, cluster, repair.node, repair.new)
        elif repair.kind == "etcd-force":
            # a majority moved at once (plan_repair): the first master's etcd alone, from its data (docs/ha.md)
            for line in etcd.force_new_cluster(ctx, cluster, repair.node, repair.new):
                ctx.note(line)
                done.append(line)
            ctx.invalidate(repair.node)
            ctx.note(f"{repair.node}: {etcd.wait_healthy(ctx, cluster, repair.node)}")
        else:
            first = repair.node == cluster.masters[0].name
            initial_cluster = ""
            if repair.rejoin:
                # its old member is gone: added anew on a member with quorum before its etcd restarts, so that it
                # starts as that member (etcd docs, "Runtime reconfiguration", "Add a new member")
                added, initial_cluster = etcd.add_member(ctx, cluster, repair.node, repair.new)
                if added:
                    ctx.note(added)
                    done.append(added)
            config = init_config(ctx.lab, cluster, repair.new, host_sans(ctx, cluster, repair.new), node=repair.node)
            transport.put(INIT_CONFIG, config.encode(), 0o600, sudo=True)
            run = script("repair.control-plane", "cluster/repair-control-plane.sh.j2", cluster=cluster.name,
                         node=repair.node, old=repair.old, new=repair.new, regenerate_certs=repair.regenerate_certs,
                         config_path=INIT_CONFIG, all_kubeconfigs=first, rejoin=repair.rejoin,
                         initial_cluster=initial_cluster, etcd_data=etcd.ETCD_DATA, etcd_manifest=etcd.ETCD_MANIFEST)
            transport.run(run, sudo=True, timeout=300)
            if highly_available(cluster) and repair.node not in forcing:
                # one member at a time: the next one's files change only once this one is back, so the members that
                # run keep quorum throughout (a member about to be forced has no quorum to come back to yet)
                ctx.invalidate(repair.node)
                ctx.note(f"{repair.node}: {etcd.wait_healthy(ctx, cluster, repair.node)}")
        ctx.invalidate(repair.node)
    return [str(r) for r in repairs] + done


def reconcile_addresses(ctx, cluster, repair: bool = True) -> list[str]:
    """After VMs came back (possibly at new addresses): repair the cluster's files, rewrite the host's kubeconfig,
    and wait until the API answers through it. What `boot` calls for each installed cluster; returns the changes.
    `repair=False` right after `kubeadm init`: nothing can have moved yet."""
    address = node_address(ctx, cluster.masters[0])
    done = repair_addresses(ctx, cluster) if repair else []
    if highly_available(cluster):  # the host's endpoint: labctl's forwarder, told the masters' addresses, running
        done += apiproxy.sync(ctx, cluster)[1]
        done += _balancers(ctx, cluster) if repair else []
    elif apiproxy.endpoint(ctx.state, cluster.name) is not None:
        # shrunk to one master (docs/ha.md, "Shrinking"): the host reaches it directly again
        apiproxy.forget(ctx.state, cluster.name)
        if not apiproxy.read_routes(ctx.state.root):
            apiproxy.stop(ctx.state)
        done.append(f"{cluster.name}: one master now: the host's kubeconfig names it, no API forwarder")
    problem = kubeconfig_problem(ctx, cluster, address)
    if problem:
        done.append(f"kubeconfig {fetch_kubeconfig(ctx, cluster, address)} ({problem})")
    for line in kubeconfig.sync_merged(ctx.state, cluster.name):  # the copies `kubeconfig --merge` made follow
        ctx.note(f"{cluster.name}: {line}")
        done.append(line)
    kube = ctx.kube(cluster)
    kube.wait_for("the API server answers", lambda: (kube.nodes() is not None, "answering"), timeout=API_WAIT)
    if restarted := cni.restart_if_pending(ctx, cluster):
        done.append(restarted)
    return done


def _balancers(ctx, cluster) -> list[str]:
    """The local API balancer of every joined worker of an HA cluster lists the masters' current addresses (after a
    master moved): a reload where the config changed. Skipped, and said so, while a master has no address."""
    try:
        balancer.master_addresses(ctx, cluster)
    except LabctlError as exc:
        ctx.note(f"{cluster.name}: workers' haproxy not checked ({exc.message.splitlines()[0]})")
        return []
    done = []
    for worker in cluster.workers:
        try:
            if hosts_address(ctx.facts(worker.name).text(HOSTS), endpoint_host(cluster.name)) != LOCAL_API:
                continue  # not joined through its balancer yet: its join step installs it
            if balancer.problem(ctx, cluster, worker) and (changed := balancer.ensure(ctx, cluster, worker)):
                done.append(changed)
        except LabctlError as exc:  # a worker that is off: its join (install) or the next boot catches up
            ctx.note(f"{worker.name}: haproxy not checked ({exc.message.splitlines()[0]})")
    return done


class Init(Phase):
    name = "init"
    scope = "cluster"
    after = ("kubepkgs",)
    description = "kubeadm init on the first control plane; kubeconfig on this machine"

    def needs_nodes(self, lab, cluster) -> list[str]:
        # kubeadm init runs on the first control plane only: the other nodes' packages install beside it, and
        # their joins wait for both (join is `after` kubepkgs and init).
        return [cluster.masters[0].name]

    def blocked(self, ctx, target: Target) -> str | None:
        # the VMs of this provider share no network (QEMU network user): no cluster can form, whatever runs first
        return ctx.provider.network_problem()

    def check(self, ctx, target: Target) -> Check:
        cluster = ctx.lab.cluster(target.cluster)
        master = cluster.masters[0]
        address = node_address(ctx, master)
        facts = ctx.facts(master.name)
        if not facts.control_plane_initialised:
            if facts.kubeadm_ran:
                return Check(False, f"{master.name}: kubeadm ran but left no complete control plane (reported)")
            return Check(False, f"kubeadm init on {master.name} ({address})")
        want = endpoint_address(cluster, address)
        if hosts_address(facts.text(HOSTS), endpoint_host(cluster.name)) != want:
            return Check(False, f"{master.name}: /etc/hosts does not send {endpoint_host(cluster.name)} to {want}")
        problem = kubeconfig_problem(ctx, cluster, address) or merged_problem(ctx, cluster)
        if problem:
            return Check(False, problem)
        return Check(True, f"control plane on {master.name} at {address}")

    def apply(self, ctx, target: Target) -> str:
        cluster = ctx.lab.cluster(target.cluster)
        master = cluster.masters[0]
        address = node_address(ctx, master)
        facts = ctx.facts(master.name)
        transport = ctx.transport(master.name)
        done: list[str] = []
        fresh = not facts.control_plane_initialised
        if fresh:
            if facts.kubeadm_ran:
                raise StepError(
                    f"{master.name}: kubeadm ran on this node but left no complete control plane (kube-apiserver "
                    "manifest and admin.conf are not both there); labctl does not reset a node on its own",
                    hint=f"look at `journalctl -u kubelet` on {master.name}; if it holds nothing you need, run "
                    f"`sudo kubeadm reset -f` there and then `labctl install --cluster {cluster.name} --from init`",
                )
            transport.run(hosts_entry(cluster, address), sudo=True, timeout=60)
            sans = host_sans(ctx, cluster, address)
            transport.put(INIT_CONFIG, init_config(ctx.lab, cluster, address, sans).encode(), 0o600, sudo=True)
            ctx.note(f"{master.name}: kubeadm init (pulls the control-plane images first)")
            run = script("init.kubeadm", "cluster/kubeadm-init.sh.j2", config_path=INIT_CONFIG, skip_token_print=True,
                         **init_params(ctx.lab, cluster, address))
            try:
                transport.run(run, sudo=True, timeout=INIT_TIMEOUT)
                if highly_available(cluster):
                    # kubeadm init returned with its API server answering: from now on this master reaches the API
                    # at 127.0.0.1, itself, whichever member is down later (docs/ha.md)
                    transport.run(hosts_entry(cluster, LOCAL_API), sudo=True, timeout=60)
            finally:
                ctx.invalidate(master.name)
            done.append(f"kubeadm init on {master.name}")
        done += reconcile_addresses(ctx, cluster, repair=not fresh)
        return "; ".join(done)


phase = Init()

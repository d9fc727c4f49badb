"""join: every other node joins its cluster — further control planes one at a time, then all workers together.

check: the node joined (kubeadm's marker, /etc/kubernetes/kubelet.conf), resolves the API name to the first control
       plane (HA cluster: to 127.0.0.1, and a worker's local haproxy is as labctl renders it and running), and the
       API shows its Node at its current address and Ready — or NotReady only because no CNI is installed yet (the `cni` phase comes next and makes it Ready).
apply: a node that never joined gets the hosts line (HA: a worker its haproxy first; a master a running member's
       address, 127.0.0.1 once its own control plane is up), a join config with a bootstrap token and CA hash
       fetched fresh from a running control plane in this run, and `kubeadm join`; then its Node must register.
       A joined node whose address or hosts line went stale is repaired in place. A joined node that is NotReady
       for any other reason is reported (StepError), never joined again: kubeadm join on a joined node fails,
       and `kubeadm reset` would throw away whatever runs there.
"""

from __future__ import annotations

import hashlib
import secrets
import string

from labctl import apiproxy, redact
from labctl.engine import Check, Phase, Target
from labctl.errors import LabctlError, StepError
from labctl.kube import API_PORT, LOCAL_API, balancer, endpoint_host, highly_available, hosts_address, node_address
from labctl.remote.facts import BOOTSTRAP_KUBELET_CONF, HOSTS, KUBELET_CONF
from labctl.render import render, script

from . import cni
from .init import CA_CERT, CRI_SOCKET, hosts_entry, repair_addresses

JOIN_CONFIG = "/etc/labctl/kubeadm-join.yaml"  # holds the token: 0600, removed by the join script
TOKEN_TTL = "1h"  # outlives one run's joins; a later run fetches a new one
JOIN_TIMEOUT = 900
REGISTER_WAIT = 300


def ca_cert_hash(ca_pem: bytes) -> str:
    """kubeadm's --discovery-token-ca-cert-hash: sha256 of the CA's DER SubjectPublicKeyInfo."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = x509.load_pem_x509_certificate(ca_pem).public_key()
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def join_params(cluster, node, address: str, token: str, ca_hash: str, certificate_key: str | None = None) -> dict:
    return {
        "cluster": cluster.name,
        "node": node.name,
        "address": address,
        "port": API_PORT,
        "endpoint_host": endpoint_host(cluster.name),
        "token": token,
        "ca_cert_hash": ca_hash,
        "cri_socket": CRI_SOCKET,
        "certificate_key": certificate_key,
    }


def join_config(cluster, node, address: str, token: str, ca_hash: str, certificate_key: str | None = None) -> str:
    return render("kubeadm/join.yaml.j2", **join_params(cluster, node, address, token, ca_hash, certificate_key))


def new_token() -> str:
    """A bootstrap token, "[a-z0-9]{6}.[a-z0-9]{16}" from a CSPRNG, as `kubeadm token create [token]` takes it
    (https://kubernetes.io/docs/reference/setup-tools/kubeadm/kubeadm-token/)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(6)) + "." + \
        "".join(secrets.choice(alphabet) for _ in range(16))


def _credentials(ctx, cluster) -> tuple[str, str]:
    """A fresh bootstrap token and the CA hash, from the first control plane (once per cluster per run).

    labctl makes the token and registers it for redaction before kubeadm stores (and prints) it, so it never
    reaches the node log, the terminal or the debug log (labctl/redact.py)."""
    token = new_token()
    redact.register(token, token.split(".", 1)[1])
    transport = ctx.transport(live_member(ctx, cluster)[0].name)
    run = script("join.token", "cluster/join-token.sh.j2", cluster=cluster.name, ttl=TOKEN_TTL,
                 description="labctl join", token=token)
    transport.run(run, sudo=True, timeout=120)
    return token, ca_cert_hash(transport.get(CA_CERT, sudo=True))


def _certificate_key(ctx, cluster) -> str:
    """Upload the control-plane certificates under a new key (they expire after 2 h, so once per run)."""
    key = secrets.token_hex(32)  # what `kubeadm certs certificate-key` prints: 32 random bytes, hex
    redact.register(key)  # before upload-certs prints it back ("Using certificate key: ...")
    run = script("join.upload-certs", "cluster/upload-certs.sh.j2", cluster=cluster.name, certificate_key=key)
    ctx.transport(live_member(ctx, cluster)[0].name).run(run, sudo=True, timeout=120)
    return key


def live_member(ctx, cluster, joining=None) -> tuple:
    """(master, its address): the first control plane of `cluster` (clusters.json order, `joining` left out) that is
    reachable and has a control plane (kubeadm's markers). Where join tokens and certificates come from, and where a
    joining master's hosts line points until its own API server answers. Raises StepError when there is none."""
    tried = []
    for master in cluster.masters:
        if master is joining:
            continue
        try:
            address = node_address(ctx, master)
            if ctx.facts(master.name).control_plane_initialised:
                return master, address
            tried.append(f"{master.name}: no control plane yet")
        except LabctlError as exc:
            tried.append(str(exc).splitlines()[0])
    raise StepError(f"{cluster.name}: no running control plane to join ({'; '.join(tried) or 'none'})",
                    hint="`labctl status` shows the masters; `labctl boot` starts stopped ones")


def endpoint_problem(ctx, cluster, node) -> str | None:
    """Why `node`'s way to the API by the stable name is not the one labctl keeps, or None: its hosts line (the first
    master's address; 127.0.0.1 in an HA cluster) and, on a worker of an HA cluster, its local balancer."""
    ha = highly_available(cluster)
    want = LOCAL_API if ha else node_address(ctx, cluster.masters[0])
    if hosts_address(ctx.facts(node.name).text(HOSTS), endpoint_host(cluster.name)) != want:
        return f"/etc/hosts does not send {endpoint_host(cluster.name)} to {want}"
    if ha and node.role == "worker":
        return balancer.problem(ctx, cluster, node)
    return None


def _state(ctx, cluster, node) -> tuple[str, str]:
    """(state, detail); state: joined | absent | stale (repairable in place) | broken (report)."""
    facts = ctx.facts(node.name)
    if not facts.exists(KUBELET_CONF):
        if facts.exists(BOOTSTRAP_KUBELET_CONF) or facts.kubeadm_ran:
            return "broken", "kubeadm ran here but the node never finished joining (no kubelet.conf)"
        return "absent", "not joined yet"
    if problem := endpoint_problem(ctx, cluster, node):
        if ctx.kube(cluster).node(node.name) is None:
            # A moved control plane keeps its Nodes; one that has none of this node was made anew (its VM was
            # deleted and `init` ran again): repairing the address would leave the kubelet trusting the old CA,
            # and waiting for it to register would take the whole REGISTER_WAIT, per node.
            return "broken", _never_registered(cluster, node)
        return "stale", problem
    return _api_state(ctx, cluster, node)


def _never_registered(cluster, node) -> str:
    return (f"joined {cluster.name} once (kubelet.conf) but the cluster has no Node of this name: its "
            f"control plane was created anew since (was {cluster.masters[0].name}'s VM deleted?), or the Node was "
            "deleted")


def _api_state(ctx, cluster, node) -> tuple[str, str]:
    """The Node as the API shows it: registered, at the VM's address, Ready (or waiting only for the CNI)."""
    kube = ctx.kube(cluster)
    info = kube.node(node.name)
    if info is None:
        return "broken", _never_registered(cluster, node)
    address = node_address(ctx, node)
    if info.internal_ip and info.internal_ip != address:
        return "stale", f"the Node reports {info.internal_ip}, the VM is at {address}"
    if info.ready:
        return "joined", f"joined, Ready ({info.kubelet_version})"
    if info.ready_status == "False" and not kube.daemonset_ready("kube-system", "cilium").found:
        return "joined", "joined; NotReady until the CNI is installed"
    why = f"{info.ready_status or 'no status'}: {info.ready_reason or 'no reason given'}"
    return "broken", f"joined but NotReady ({why})"


class Join(Phase):
    name = "join"
    scope = "node"
    # its own node's packages (init waits only for the first control plane's); a static machine's readiness
    after = ("kubepkgs", "init", "preflight")
    description = "control planes one at a time, then workers in parallel"

    def applies(self, lab, cluster) -> bool:
        return len(cluster.nodes) > 1

    def waves(self, cluster):
        # The first control plane ran init; etcd grows one member at a time; workers do not depend on each other.
        waves = [[m] for m in cluster.masters[1:]]
        return waves + [cluster.workers] if cluster.workers else waves

    def check(self, ctx, target: Target) -> Check:
        cluster, node = ctx.node(target.node)
        state, detail = _state(ctx, cluster, node)
        return Check(state == "joined", detail + (" (reported, not joined again)" if state == "broken" else ""))

    def apply(self, ctx, target: Target) -> str:
        cluster, node = ctx.node(target.node)
        state, detail = _state(ctx, cluster, node)
        if state == "broken":
            raise StepError(
                f"{node.name}: {detail}; labctl does not join a node twice",
                hint=f"look at `journalctl -u kubelet` on {node.name}. To start it over: `kubectl delete node "
                f"{node.name}`, `sudo kubeadm reset -f` on the node, then `labctl install --cluster {cluster.name} "
                "--from join`",
            )
        if state == "stale":
            done = repair_addresses(ctx, cluster, only=[node.name])
            if highly_available(cluster) and node.role == "worker" and (changed := balancer.ensure(ctx, cluster, node)):
                done.insert(0, changed)
            self._wait_registered(ctx, cluster, node)
            return "; ".join(done) or detail
        address = node_address(ctx, node)
        control_plane = node.role == "master"
        transport = ctx.transport(node.name)
        ha = highly_available(cluster)
        if ha and not control_plane:
            balancer.ensure(ctx, cluster, node)  # before the hosts line: 127.0.0.1 must answer from then on
            api_address = LOCAL_API
        else:
            # a joining master of an HA cluster has no API server of its own yet: a live member's until it has
            api_address = live_member(ctx, cluster, joining=node)[1] if ha else node_address(ctx, cluster.masters[0])
        transport.run(hosts_entry(cluster, api_address), sudo=True, timeout=60)
        token, ca_hash = ctx.once(f"join-credentials:{cluster.name}", lambda: _credentials(ctx, cluster))
        key = None
        if control_plane:
            key = ctx.once(f"certificate-key:{cluster.name}", lambda: _certificate_key(ctx, cluster))
        transport.put(JOIN_CONFIG, join_config(cluster, node, address, token, ca_hash, key).encode(), 0o600, sudo=True)
        ctx.note(f"{node.name}: kubeadm join{' --control-plane' if control_plane else ''}")
        run = script("join.kubeadm", "cluster/kubeadm-join.sh.j2", cluster=cluster.name, node=node.name,
                     address=address, endpoint_host=endpoint_host(cluster.name), control_plane=control_plane,
                     config_path=JOIN_CONFIG)
        try:
            transport.run(run, sudo=True, timeout=JOIN_TIMEOUT)
            if ha and control_plane:
                # `kubeadm join --control-plane` returns once its API server and etcd member are healthy (its
                # control-plane-check/etcd join phases), so the stable name may now resolve to this master itself.
                # A Cilium agent the kubelet started here meanwhile (a cluster grown under a running Cilium) holds a
                # copy of /etc/hosts naming the member it joined through: the cni phase restarts it (cni.py).
                cni.mark_restart(ctx, cluster, True)
                transport.run(hosts_entry(cluster, LOCAL_API), sudo=True, timeout=60)
        finally:
            ctx.invalidate(node.name)
        self._wait_registered(ctx, cluster, node)
        if ha and control_plane:  # the host's endpoint forwards to the new member too
            apiproxy.sync(ctx, cluster)
        return f"joined {cluster.name} as {'a control plane' if control_plane else 'a worker'}"

    def _wait_registered(self, ctx, cluster, node) -> None:
        def registered() -> tuple[bool, str]:
            state, detail = _api_state(ctx, cluster, node)
            return state == "joined", detail

        ctx.kube(cluster).wait_for(f"{node.name} to register", registered, timeout=REGISTER_WAIT)


phase = Join()

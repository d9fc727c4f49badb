"""stacks: every stack a cluster declares (templates/stacks/<name>/, or the user's own chart or manifests), one step
each, in `requires` order; independent stacks of a cluster run in parallel. A stack is data: this one phase installs
any of them (labctl/stacks.py renders them).

check (from the host, through the cluster's API): the stack's credential Secrets hold the lab's passwords; each Helm
       release is deployed at the pinned chart version with exactly the values labctl renders (read from Helm's
       release Secret); every manifest object exists with every field labctl sets; the stack's hooks are satisfied;
       its ready-objects are ready.
apply: only what the check found wrong, in this order: namespace and credential Secrets (server-side apply) → each
       release that differs, with Helm on the first control plane (values in a 0600 file there; CRDs a chart never
       upgrades applied first) → each manifest object that differs, server-side, a custom resource only once its
       CRD is served → hooks → wait for the ready-objects. What was installed is recorded, so `install --prune`
       can remove a stack that clusters.json no longer declares.
"""

from __future__ import annotations

import base64

from labctl import credentials
from labctl import stacks as S
from labctl.engine import Check, Phase, Target
from labctl.stack_hooks import HOOKS
from labctl.render import script

from labctl.helm import HELM_TIMEOUT, recover_pending, uninstall_release

from .cni import rollback_flag

VALUES_DIR = "/etc/labctl/stacks"
READY_WAIT = 900  # Jenkins fetches its plugins and Prometheus pulls several images on a first start
CRD_WAIT = 120  # a CRD is Established within seconds of its creation
APPLY_FIRST = {"Namespace": 0, "CustomResourceDefinition": 1}  # what other objects may need to exist (stable sort)


def _requires(cluster, name: str) -> list[str]:
    descriptor = S.catalogue().get(name)
    if descriptor is None:
        return cluster.stack(name).requires
    declared = S.installable(cluster)
    return [*descriptor.requires, *(a for a in descriptor.after if a in declared), *cluster.stack(name).requires]


def contains(live, want) -> bool:
    """Does the live object carry every field labctl sets? Maps compare key by key, lists item by item; quantities
    by value (the API server stores `cpu: 1` as "1" and `1024Mi` as "1Gi")."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(contains(live.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(contains, live, want))
    if live == want:
        return True
    a, b = S.quantity(live), S.quantity(want)
    return a is not None and a == b


def normalised(obj: dict) -> dict:
    """A manifest as the API will hold it: a Secret's stringData becomes data (the API server stores only data)."""
    obj = {**obj, "metadata": dict(obj["metadata"])}
    if obj["kind"] == "Secret" and "stringData" in obj:
        data = dict(obj.get("data") or {})
        data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in obj["stringData"].items()})
        obj = {k: v for k, v in obj.items() if k != "stringData"}
        obj["data"] = data
    return obj


def _same_object(a: list[str], b: list[str]) -> bool:
    """Two recorded identities name one object: a cluster-scoped kind recorded before its CRD was served carries a
    namespace it does not have."""
    return a[:2] == b[:2] and a[3] == b[3] and (a[2] == b[2] or not a[2] or not b[2])


def _namespaces(stack: S.StackDef) -> list[str]:
    wanted = [stack.namespace, *(r.namespace for r in stack.releases), *(c.namespace for c in stack.credentials)]
    return [ns for ns in dict.fromkeys(wanted) if ns not in S.SYSTEM_NAMESPACES]


def _namespace(name: str, stack: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {S.STACK_LABEL: stack}}}


def hook_problems(ctx, cluster, stack: S.StackDef) -> list[str]:
    """What the stack's hooks find wrong (read-only)."""
    return [p for name in stack.hooks for p in HOOKS[name].problems(ctx, cluster, stack)]


def run_hooks(ctx, cluster, stack: S.StackDef) -> list[str]:
    """Apply the stack's hooks that see a problem; returns what they found ([] when all was well)."""
    found = []
    for name in stack.hooks:
        hook = HOOKS[name]
        problems = hook.problems(ctx, cluster, stack)
        if problems:
            hook.apply(ctx, cluster, stack)
            found += problems
    return found


class StackState:
    """What one stack looks like on the live cluster: the parts that differ from what labctl renders."""

    def __init__(self, ctx, cluster, stack: S.StackDef):
        self.ctx, self.cluster, self.stack = ctx, cluster, stack
        self.kube = ctx.kube(cluster)

    def missing_namespaces(self) -> list[str]:
        return [ns for ns in _namespaces(self.stack) if self.kube.get("v1", "Namespace", "", ns) is None]

    def stale_credentials(self) -> list:
        out = []
        # read, never generated here: a check (and `plan`) writes nothing
        stored = credentials.read_all(self.ctx.state).get(self.cluster.name, {}) if self.stack.credentials else {}
        for cred in self.stack.credentials:
            if cred.sealed:  # the stack's hook delivers it sealed; a plain Secret here would defeat that
                continue
            entry = stored.get(cred.name)
            if entry is None or not credentials.secret_matches(
                    cred, entry, self.kube.get("v1", "Secret", cred.namespace, cred.secret)):
                out.append(cred)
        return out

    def release_problem(self, release: S.ReleaseDef) -> str | None:
        live = self.kube.helm_release(release.namespace, release.release)
        if live is None:
            return f"release {release.release} not installed"
        if live.status != "deployed":
            return f"release {release.release} is {live.status}"
        if live.chart_version != release.version:
            return f"release {release.release} is chart {live.chart_version}, want {release.version}"
        if live.values != release.values:
            return f"release {release.release}: values differ from clusters.json"
        for crd in release.provides_crds:  # Helm's record says nothing of a CRD deleted by hand
            if self.kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", crd) is None:
                return f"release {release.release}: CRD {crd} missing"
        return None

    def stale_objects(self) -> list[dict]:
        out = []
        for obj in self.stack.objects:
            want = normalised(obj)
            resource = self.kube.resource(want["apiVersion"], want["kind"])
            if resource is None:
                out.append(want)  # its CRD is not there yet: certainly not applied
                continue
            if not resource[1] and "namespace" in want["metadata"]:  # the API drops it from cluster-scoped kinds
                want["metadata"] = {k: v for k, v in want["metadata"].items() if k != "namespace"}
            live = self.kube.get(want["apiVersion"], want["kind"], S.object_namespace(self.kube, want, self.stack.namespace),
                                 want["metadata"]["name"])
            if live is None or not contains(live, want):
                out.append(want)
        return out

    def identities(self) -> list[list[str]]:
        """[apiVersion, kind, namespace, name] of every manifest object, as recorded for prune."""
        return [[o["apiVersion"], o["kind"], S.object_namespace(self.kube, o, self.stack.namespace), o["metadata"]["name"]]
                for o in self.stack.objects]

    def _recorded(self) -> dict:
        return self.ctx.state.read().get("stacks", {}).get(self.cluster.name, {}).get(self.stack.name, {})

    def orphans(self) -> list[list[str]]:
        """Objects labctl applied for this stack earlier that its manifests no longer have (a file was deleted):
        `kubectl apply --prune` would remove them, and so does labctl."""
        current = self.identities()
        return [o for o in self._recorded().get("objects", []) if not any(_same_object(o, c) for c in current)
                and self.kube.get(o[0], o[1], o[2], o[3]) is not None]

    def orphan_releases(self) -> list[list[str]]:
        """[namespace, release] of releases this stack installed earlier under another namespace or release name
        (a user chart moved): Helm keeps the old one, so labctl uninstalls it, unless a declared stack of the cluster
        installs that very release now (e.g. a renamed stack)."""
        declared = {(r.namespace, r.release) for r in self.stack.releases}
        others = self.ctx.state.read().get("stacks", {}).get(self.cluster.name, {})
        declared |= {tuple(r) for name, record in others.items() if name != self.stack.name
                     for r in record.get("releases", [])}
        return [r for r in self._recorded().get("releases", []) if tuple(r) not in declared
                and self.kube.helm_release(r[0], r[1]) is not None]


    def not_ready(self) -> list[str]:
        return [r.detail for kind, ns, name in self.stack.ready if not (r := self.kube.ready(kind, ns, name))]

    def problems(self) -> list[str]:
        found = [f"namespace {ns} missing" for ns in self.missing_namespaces()]
        found += [f"{c.name} credentials not in Secret {c.namespace}/{c.secret}" for c in self.stale_credentials()]
        found += [p for r in self.stack.releases if (p := self.release_problem(r))]
        found += [f"release {rel} in namespace {ns} is no longer declared (the stack moved it)"
                  for ns, rel in self.orphan_releases()]
        stale = self.stale_objects()
        if stale:
            names = ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in stale[:3])
            found.append(f"{len(stale)} object(s) not applied or changed: {names}{', …' if len(stale) > 3 else ''}")
        orphans = self.orphans()
        if orphans:
            found.append(f"{len(orphans)} object(s) no longer in the stack: "
                         + ", ".join(f"{kind} {name}" for _, kind, _, name in orphans[:3]))
        return found + hook_problems(self.ctx, self.cluster, self.stack) + self.not_ready()


class Stacks(Phase):
    name = "stacks"
    scope = "cluster"
    after = ("cni", "nodeconfig")
    description = "the stacks each cluster declares (catalogue, user charts, user manifests)"

    def applies(self, lab, cluster) -> bool:
        return bool(S.installable(cluster))

    def items(self, lab, cluster) -> list[str]:
        return S.installable(cluster)

    def item_requires(self, lab, cluster, item: str) -> list[str]:
        return _requires(cluster, item)

    def cross_cluster(self, lab, cluster, item):
        descriptor = S.catalogue().get(item or "")
        if descriptor and any(HOOKS[h].cross_cluster for h in descriptor.hooks):
            return [("cni", other.name) for other in lab.clusters if other.name != cluster.name]
        return []

    def _stack(self, ctx, target: Target):
        cluster = ctx.lab.cluster(target.cluster)
        return cluster, S.resolve(ctx.lab, cluster, target.item, ctx.state.root.parent)

    def check(self, ctx, target: Target) -> Check:
        cluster, stack = self._stack(ctx, target)
        found = StackState(ctx, cluster, stack).problems()
        if found:
            return Check(False, "; ".join(found))
        versions = ", ".join(f"{r.chart} {r.version}" for r in stack.releases)
        return Check(True, f"{stack.name} ready" + (f" ({versions})" if versions else ""))

    def apply(self, ctx, target: Target) -> str:
        cluster, stack = self._stack(ctx, target)
        live = StackState(ctx, cluster, stack)
        kube = live.kube
        orphans, moved = live.orphans(), live.orphan_releases()
        # recorded before anything is installed, so `install --prune` can remove a stack whose install failed
        self._record(ctx, cluster, stack, orphans + live.identities(), moved)
        for ns in live.missing_namespaces():
            kube.apply(_namespace(ns, stack.name))
        for cred in live.stale_credentials():
            kube.apply(credentials.secret_object(cred, credentials.ensure(ctx.state, cluster.name, cred), stack.name))
        # hooks first: metrics-server only turns Ready (and Helm's --wait only returns) once a kubelet serves a
        # certificate, i.e. once its CSR is approved
        run_hooks(ctx, cluster, stack)
        changed = [r for r in stack.releases if live.release_problem(r)]
        if changed:
            self._helm(ctx, cluster, stack, changed)
        stale = live.stale_objects()
        if stale:
            ctx.note(f"{cluster.name}: {stack.name}: applying {len(stale)} object(s) server-side")
        for obj in sorted(stale, key=lambda o: APPLY_FIRST.get(o["kind"], len(APPLY_FIRST))):
            self._wait_served(kube, obj)
            kube.apply(obj, stack.namespace)
        for namespace, release in moved:
            ctx.note(f"{cluster.name}: {stack.name}: uninstalling release {release} from {namespace} (moved)")
            uninstall_release(ctx, cluster, stack.name, namespace, release)
        for api_version, kind, namespace, name in reversed(orphans):
            ctx.note(f"{cluster.name}: {stack.name}: deleting {kind} {name} (no longer in its manifests)")
            kube.delete(api_version, kind, namespace, name)
        if orphans or stale or moved:  # now every kind is served, each object is recorded with its real scope
            self._record(ctx, cluster, stack, live.identities())

        def settled() -> tuple[bool, str]:
            run_hooks(ctx, cluster, stack)  # e.g. a kubelet that restarted files a new CSR
            waiting = live.not_ready()
            return not waiting, "; ".join(waiting)

        if stack.ready:
            ctx.note(f"{cluster.name}: {stack.name}: waiting for {len(stack.ready)} object(s) to be ready")
        kube.wait_for(f"stack {stack.name} to be ready", settled, timeout=READY_WAIT)
        parts = [f"{r.release} {r.version}" for r in changed]
        if stale:
            parts.append(f"{len(stale)} object(s) applied")
        if orphans:
            parts.append(f"{len(orphans)} deleted")
        if moved:
            parts.append(f"{len(moved)} moved release(s) uninstalled")
        return f"{stack.name}: " + (", ".join(parts) if parts else "ready")

    def _helm(self, ctx, cluster, stack: S.StackDef, releases: list[S.ReleaseDef]) -> None:
        import yaml

        lab = ctx.lab
        transport = ctx.transport(cluster.masters[0].name)
        helm = f"v{lab.versions.helm}"
        transport.run(script("cni.helm-binary", "cluster/helm-binary.sh.j2", version=helm), sudo=True, timeout=300)
        for release in releases:
            recover_pending(ctx, cluster, release.namespace, release.release)
            values_path = f"{VALUES_DIR}/{stack.name}/{release.release}.yaml"
            transport.put(values_path, yaml.safe_dump(release.values, sort_keys=True).encode(), 0o600, sudo=True)
            ctx.note(f"{cluster.name}: helm upgrade --install {release.release} ({release.chart} {release.version})")
            transport.run(script(
                "stacks.helm-install", "cluster/stack-helm-install.sh.j2",
                cluster=cluster.name, stack=stack.name, release=release.release, chart=release.chart,
                chart_ref=release.chart_ref, repo_url=release.repo, repo_name=release.repo_name,
                oci=release.repo.startswith("oci://"), version=release.version, namespace=release.namespace,
                values_path=values_path, timeout=HELM_TIMEOUT, helm_version=helm,
                rollback_flag=rollback_flag(lab.versions.helm), crds_path=release.crds or "",
            ), sudo=True, timeout=20 * 60)

    @staticmethod
    def _wait_served(kube, obj: dict) -> None:
        if kube.resource(obj["apiVersion"], obj["kind"]) is not None:
            return
        kube.wait_for(f"the API to serve {obj['kind']} ({obj['apiVersion']})",
                      lambda: (kube.resource(obj["apiVersion"], obj["kind"]) is not None,
                               f"{obj['kind']} not served: its CRD is not Established"), timeout=CRD_WAIT, interval=1)

    @staticmethod
    def _record(ctx, cluster, stack: S.StackDef, objects: list[list[str]], moved: list[list[str]] = ()) -> None:
        """What `install --prune` removes if the stack leaves clusters.json (no passwords: names only); `moved`:
        releases it installed before under another namespace/name, kept in the record until uninstalled."""
        record = {
            "releases": [list(r) for r in moved] + [[r.namespace, r.release] for r in stack.releases],
            "objects": objects,
            "secrets": [[c.namespace, c.secret] for c in stack.credentials],
            "namespaces": _namespaces(stack),
        }
        ctx.state.update(lambda data: data.setdefault("stacks", {}).setdefault(cluster.name, {}).update(
            {stack.name: record}))


phase = Stacks()

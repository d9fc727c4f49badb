"""Golden images: a VM disk with the node phases' work already done for one set of pinned versions.

`labctl image build` boots one VM (`labctl-build-<hash>`) from the lab's base image, runs the node phases of
RECIPE on it through the engine and the very phase code `install` runs (prepare, runtime, kubepkgs), pre-pulls the
images those versions need (bake script: templates/node/golden-bake.sh.j2), clears the machine's identity, stops it
cleanly and keeps its disk as the golden image `labctl-k8s-<hash>`:
  - tart: a local VM of that name (`tart clone`: APFS copy-on-write, reference/tart-cli.md);
  - qemu: a flattened qcow2 file of that name in labctl's image cache (labctl/images.py cache_dir()).

The hash (IMAGE_HASH_HEX hex digits of a SHA-256) covers what the image's content depends on: the Kubernetes
version, the lowest containerd accepted, the Cilium version, the pause image, whether containerd reads registry
hosts (a registry stack is declared: phases/runtime.py), the base image, the provider, the recipe and the image
list. So an image is only ever used by a lab that pins exactly those: `install` (the vms phase) clones it when it
exists and the base image otherwise, and `plan` says which and why (`choose`). The node phases are not told: their
checks find their work done.

What a clone keeps from the image and what it does not: swap off, modules, sysctls, containerd configured, kubeadm
/kubelet/kubectl held, images pulled. Not the node's identity: the machine-id is emptied (systemd makes a new one
at the clone's first boot, machine-id(5)), labctl's SSH key is taken out of authorized_keys (first contact puts the
lab's own back), and the hostname is the node's own, so prepare names each clone (its one action on a clone).

Recorded: in the image, /etc/labctl/golden.json (versions, recipe, images, labctl version, time); in the lab,
.labctl/images.json (the same, by image name): what `plan` reads to say why an image for other versions is unused.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from . import __version__
from .engine import Check, Engine, Phase, Selection, Summary, Target, build_steps
from .errors import StepError, UsageError
from .state import write_atomic

PREFIX = "labctl-k8s-"
BUILD_PREFIX = "labctl-build-"
BUILD_CLUSTER = "labctl-build"
IMAGE_HASH_HEX = 12
RECIPE = ("prepare", "runtime", "kubepkgs")  # the node phases whose work an image carries, in install's order
MARKER = "/etc/labctl/golden.json"
RECORD = "images.json"
FORMAT = 1  # the recipe's own version: bump when the bake script changes what an image holds

# The Cilium chart's default images at a version: tag plus digest exactly as the chart renders them, so the kubelet
# finds them already pulled. Source: reference/charts/cilium/chart.txt ("default images", chart 1.19.6).
CILIUM_IMAGES = {
    "1.19.6": (
        "quay.io/cilium/cilium:v1.19.6@sha256:0df5b2750b64c49843aba1d649e9eaf61467cb0645ad3171db6f6962c095ac92",
        "quay.io/cilium/operator-generic:v1.19.6@sha256:"
        "0db4ca4e06969d8904ee036617795d0e9c3228cf7b8d902ba74fc2bb98d2d665",
        "quay.io/cilium/cilium-envoy:v1.36.9-1782267392-edeb3f2af56c37c407efa1f63f0b32f595399bbc@sha256:"
        "767101fb8a5e38f055778cb43b7aa8eed80450b37f8121effac3d9de9e06dc99",
        "quay.io/cilium/hubble-relay:v1.19.6@sha256:6782a49e3f28eba015701c4410a5ec7fa096fe9a562f879b4372dbecd827ea44",
        "quay.io/cilium/hubble-ui:v0.13.5@sha256:f7d514fc54d784ed6df9d58cf0e97648b143f92b766dd1780ed3fc845bd4c516",
        "quay.io/cilium/hubble-ui-backend:v0.13.5@sha256:"
        "fac0c300ae119274edca11fd89b1ad23c788792d8bc4ea2ba631c709e8d3c688",
    ),
}
# Another Cilium version: the images the chart names after its own version (cilium, operator-generic, hubble-relay
# at v<version>: the same chart.txt); envoy's and Hubble UI's tags are their own and unknown here, so not pulled.
CILIUM_VERSIONED = ("cilium", "operator-generic", "hubble-relay")


# ---- what an image is for ---------------------------------------------------------------------------------------

def cilium_images(version: str) -> list[str]:
    """The Cilium images to pre-pull for chart `version` (see CILIUM_IMAGES)."""
    known = CILIUM_IMAGES.get(version)
    return list(known) if known else [f"quay.io/cilium/{name}:v{version}" for name in CILIUM_VERSIONED]


def stack_images(lab) -> list[str]:
    """The images of the catalogue stacks the lab declares, on every cluster (labctl/stacks.py `images`: the
    descriptors' chart images at their pinned versions and the workloads of their manifests). A user's chart or
    manifests are not known before install: pulled then. Sorted, without duplicates."""
    from . import stacks as S

    catalogue = S.catalogue()
    return sorted({full_ref(image) for c in lab.clusters for name in c.stack_names if name in catalogue
                   for image in S.images(lab, c, name)})


def full_ref(ref: str) -> str:
    """An image reference with its registry: 'openpolicyagent/gatekeeper:v3' → 'docker.io/openpolicyagent/...',
    'busybox:1' → 'docker.io/library/busybox:1'. The name containerd's CRI stores (so the kubelet finds a short
    name pulled) and the only form `ctr images pull` accepts. Source: Docker's normalization rule, a first path
    part without '.' or ':' and not 'localhost' is not a registry (distribution/reference, ParseNormalizedNamed)."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    return ref if "." in first or ":" in first or first == "localhost" else f"docker.io/{ref}"


def sandbox_image(kubernetes: str) -> str:
    """The pause image containerd uses for this Kubernetes version: the runtime phase's own choice."""
    import importlib

    from .resources import phases_package

    return importlib.import_module(f"{phases_package().__name__}.runtime").sandbox_image(kubernetes)


def version_set(lab) -> dict[str, Any]:
    """What an image's content depends on besides its image list: {"kubernetes", "containerd" (the lowest
    accepted), "cilium", "pause", "registry_hosts", "base_image", "provider", "recipe", "format"}."""
    from .registry_hosts import lab_has_registry

    v = lab.versions
    return {"kubernetes": v.kubernetes, "containerd": v.containerd, "cilium": v.cilium,
            "pause": sandbox_image(v.kubernetes), "registry_hosts": lab_has_registry(lab),
            "base_image": lab.base_image, "provider": lab.provider.type, "recipe": list(RECIPE), "format": FORMAT}


def image_list(lab) -> list[str]:
    """Every image pulled into the image besides kubeadm's own (which `kubeadm config images pull
    --kubernetes-version` fetches on the node: its list is kubeadm's to know): the pause image containerd uses,
    Cilium's, the stacks' where known. Sorted, without duplicates."""
    return sorted({sandbox_image(lab.versions.kubernetes), *cilium_images(lab.versions.cilium), *stack_images(lab)})


def image_hash(versions: dict[str, Any], images: list[str]) -> str:
    """IMAGE_HASH_HEX hex digits of the SHA-256 of the canonical JSON of both: equal inputs, equal hash."""
    text = json.dumps({"versions": versions, "images": sorted(images)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:IMAGE_HASH_HEX]


@dataclass(frozen=True)
class Recipe:
    """One lab's golden image: its name, the build VM's, and what it holds."""

    name: str
    build_vm: str
    versions: dict[str, Any]
    images: list[str]

    def describe(self) -> str:
        v = self.versions
        return f"k8s {v['kubernetes']}, containerd ≥{v['containerd']}, cilium {v['cilium']}"


def recipe(lab) -> Recipe:
    versions, images = version_set(lab), image_list(lab)
    digest = image_hash(versions, images)
    return Recipe(PREFIX + digest, BUILD_PREFIX + digest, versions, images)


# ---- the record in .labctl/ ---------------------------------------------------------------------------------------

def records(state) -> dict[str, dict]:
    """.labctl/images.json: {image name: {"versions", "images", "recipe", "labctl", "created", "disk_bytes"}}."""
    try:
        return json.loads((state.root / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _record(state, r: Recipe, disk_bytes: int | None) -> None:
    data = records(state)
    data[r.name] = {"versions": r.versions, "images": r.images, "recipe": list(RECIPE), "labctl": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "disk_bytes": disk_bytes}
    state.ensure()
    write_atomic(state.root / RECORD, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


# ---- which image a new VM comes from --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """What the vms phase clones: `image` (the provider's reference: a VM name, a file), and why, in words."""

    image: str
    golden: str | None
    why: str


def _differences(want: dict[str, Any], have: dict[str, Any]) -> str:
    keys = ("kubernetes", "containerd", "cilium", "pause", "registry_hosts", "base_image", "provider", "recipe",
            "format")
    return ", ".join(f"{k} {have.get(k)}" for k in keys if have.get(k) != want.get(k)) or "another image list"


def choose(lab, provider, state) -> Source:
    """The golden image matching the lab's versions when the provider has it, else the base image, with the reason
    (shown by `plan` and the vms step). Asks the provider once (a `tart get`, a file look)."""
    r = recipe(lab)
    found = provider.golden_source(r.name)
    if found:
        return Source(found, r.name, f"golden image {r.name} ({r.describe()})")
    others = [(name, rec) for name, rec in sorted(records(state).items()) if name != r.name]
    why = f"base image {lab.base_image}"
    for name, rec in others:
        if provider.golden_source(name):
            return Source(lab.base_image, None,
                          f"{why}: golden image {name} is for {_differences(r.versions, rec.get('versions', {}))}")
    return Source(lab.base_image, None, f"{why}: no golden image for these versions (`labctl image build`)")


# ---- building ---------------------------------------------------------------------------------------------------

def build_lab(lab, r: Recipe):
    """The lab of one build VM: the lab's settings and versions, one cluster of one node named r.build_vm, sized
    like the lab's first control plane with the smallest disk of the lab (disks only grow: a clone of a bigger
    disk would be refused by every smaller node). A registry stack is kept so that runtime configures containerd's
    registry hosts as it will on the lab's nodes. Static machines are never cloned, so they neither size it nor
    count for the disk: the first VM control plane sizes it (else the first VM). UsageError: the lab has no VM."""
    from . import stacks as S
    from .model import Cluster, Node
    from .registry_hosts import HOOK

    first = lab.clusters[0]
    vms = [node for _, node in lab.nodes if not node.static]
    if not vms:
        raise UsageError("every node of this lab is a static machine: no VM would be cloned from a golden image",
                         hint="golden images are for the lab's VMs (docs/golden-images-and-snapshots.md)")
    master = next((node for node in vms if node.role == "master"), vms[0])
    disk = min(node.disk for node in vms)
    catalogue = S.catalogue()
    registry = [n for c in lab.clusters for n in c.stack_names if n in catalogue and HOOK in catalogue[n].hooks][:1]
    cluster = Cluster.model_construct(
        name=BUILD_CLUSTER, pod_cidr=first.pod_cidr, service_cidr=first.service_cidr,
        nodes=[Node(name=r.build_vm, role="master", cpu=master.cpu, memory=master.memory, disk=disk)],
        stacks=registry, cilium=first.cilium)
    return lab.model_copy(update={"clusters": [cluster]})


class Bake(Phase):
    """The build's last step: images pulled, identity cleared, VM stopped cleanly, disk kept as the image."""

    name = "golden"
    scope = "node"
    after = ("vms", *RECIPE)  # on the VM the node phases made (those of them that are selected)
    description = "images pre-pulled, identity cleared, stopped and kept as the golden image"

    def check(self, ctx, target: Target) -> Check:
        r: Recipe = ctx.options["recipe"]
        if ctx.provider.golden_source(r.name):
            return Check(True, f"golden image {r.name} exists")
        return Check(False, f"pull {len(r.images)} images and kubeadm's, stop, keep as {r.name}")

    def apply(self, ctx, target: Target) -> str:
        r: Recipe = ctx.options["recipe"]
        _, node = ctx.node(target.node)
        bake = bake_script(ctx.lab, r, ctx.options["phases"], ctx.options["pull"])
        ctx.transport(node.name).run(bake, sudo=True, timeout=30 * 60)  # pulls: minutes on a slow line
        ctx.drop_transport(node.name)
        how = ctx.provider.stop(node)
        if how in ctx.provider.hard_stops:  # a disk pulled from under a running guest is no image to copy
            raise StepError(f"{node.name}: did not power off cleanly (stopped by {how}); no image kept from it",
                            hint="run `labctl image build` again: the build VM is kept and resumes")
        ctx.provider.keep_golden(node.name, r.name)
        ctx.provider.delete(node)
        return f"stopped ({how}), kept as {r.name}, build VM deleted"


def bake_script(lab, r: Recipe, phases, pull: bool):
    """The build VM's bake script (templates/node/golden-bake.sh.j2). kubeadm's images only when kubepkgs is
    baked (kubeadm pulls them); none at all without `pull`."""
    from .render import script

    return script("golden.bake", "node/golden-bake.sh.j2", kubernetes=lab.versions.kubernetes,
                  kubeadm_images=pull and "kubepkgs" in phases, images=r.images if pull else [],
                  ssh_user=lab.ssh_user, marker=MARKER,
                  marker_json=json.dumps(marker(r, phases), indent=2, sort_keys=True))


def marker(r: Recipe, phases: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The marker file's content (MARKER in the image)."""
    return {"name": r.name, "versions": r.versions, "recipe": list(phases), "images": r.images,
            "labctl": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


@dataclass
class BuildResult:
    recipe: Recipe
    summary: Summary | None  # None: the image was there already, nothing ran
    pushed: str | None = None
    disk_bytes: int | None = None
    source: str | None = None  # the provider's reference to the image (tart: the VM's name; qemu: the file's path)

    @property
    def ok(self) -> bool:
        return self.summary is None or self.summary.ok


def build(session, *, push: str | None = None, emit=None, notify=None, on_start=None,
          phases: tuple[str, ...] = RECIPE, pull: bool = True) -> BuildResult:
    """Build the lab's golden image unless the provider has it already (then nothing changes); push it to the OCI
    reference `push` (tart only) when asked. `phases`: the node phases to bake (RECIPE; the real-VM test bakes
    what runs offline only); `pull`: pre-pull the images (needs the internet). Raises UsageError for a push
    under qemu (or a provider without images), before anything runs. A failed build leaves the build VM for the next run to resume."""
    from . import lab as lab_module
    from . import ownership
    from .remote.credentials import forget_host

    r = recipe(session.model)
    if push and session.model.provider.type != "tart":
        raise UsageError(f"--push: the {session.model.provider.type} provider keeps images as local files and has "
                         "no registry to push to (tart pushes VMs to OCI registries)",
                         hint="copy the qcow2 file instead; `labctl image build --json` prints its path")
    lab_module.require_provider(session)
    unknown = [p for p in phases if p not in RECIPE]
    if unknown:
        raise UsageError(f"not node phases of a golden image: {', '.join(unknown)}",
                         hint=f"choose from {', '.join(RECIPE)}")
    build_model = build_lab(session.model, r)
    build_session = lab_module.LabSession(session.config, build_model, session.state)
    all_phases = [p for p in lab_module.phases_for("install") if p.name in ("vms", *phases)] + [Bake()]
    steps = build_steps(build_model, all_phases, Selection())
    result = BuildResult(r, None)
    with session.state.locked("image build"):
        ctx = build_session.context(notify=notify, recipe=r, phases=tuple(phases), pull=pull)
        try:
            if not hasattr(ctx.provider, "golden_source"):
                raise UsageError(f"the {session.model.provider.type} provider keeps no images of its own",
                                 hint="golden images are for the tart and qemu providers")
            ctx.provider.own(r.build_vm)
            if not ctx.provider.golden_source(r.name):
                if on_start:
                    on_start(steps)
                result.summary = Engine(ctx, parallel=1, emit=emit).run(steps)
                if result.summary.ok:
                    ownership.release(session.state, r.build_vm)
                    forget_host(session.state, r.build_vm)
            if result.ok:
                result.source = ctx.provider.golden_source(r.name)
                result.disk_bytes = ctx.provider.golden_disk_bytes(r.name)
                if result.summary is not None or r.name not in records(session.state):
                    _record(session.state, r, result.disk_bytes)
                if push:
                    (notify or (lambda _: None))(f"pushing {r.name} to {push}")
                    ctx.provider.push_golden(r.name, push)
                    result.pushed = push
        finally:
            ctx.close()
    return result


def delete(session, name: str) -> bool:
    """Delete the golden image `name` (and its record). True when there was one."""
    if not name.startswith(PREFIX):
        raise UsageError(f"{name!r} is not a golden image name ({PREFIX}<hash>)")
    with session.state.locked("image delete"):
        ctx = session.context()
        try:
            gone = ctx.provider.delete_golden(name)
        finally:
            ctx.close()
        data = records(session.state)
        if data.pop(name, None) is not None:
            write_atomic(session.state.root / RECORD, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)
    return gone


"""vms: every node's VM exists with the model's cpu/memory/disk, is running, and has an IPv4 address.

check: the VM exists, its size matches clusters.json, it is running, and the provider reports an address (the
       provider checks Running first: a stopped VM's old DHCP lease is no address).
apply: make sure the base image is there (once per run, not once per node), clone if absent (from the golden
       image matching the lab's versions when there is one: labctl/golden.py), resize (a running VM
       is stopped and started again for that, announced), start, and wait for the address.
A VM of that name that labctl did not create is refused (labctl/ownership.py) unless the run adopts (`--adopt`).
Waiting for SSH is the next phase's business.
"""

from __future__ import annotations

from labctl import ownership
from labctl.engine import Check, Phase, Target
from labctl.errors import ProviderError
from labctl.providers.base import shrink_error


def _differences(vm, node) -> list[str]:
    """What differs between the VM and its node in clusters.json, in words."""
    out = []
    if vm.cpu != node.cpu:
        out.append(f"cpu {vm.cpu} → {node.cpu}")
    if vm.memory != node.memory:
        out.append(f"memory {vm.memory} → {node.memory} MiB")
    if vm.disk != node.disk:
        out.append(f"disk {vm.disk} → {node.disk} GB")
    return out


def _ensure_image(ctx) -> None:
    provider, image = ctx.provider, ctx.lab.base_image
    if not provider.image_cached(image):
        ctx.note(f"pulling {image} (once for all VMs)")
        provider.pull(image)


def source(ctx):
    """What new VMs are cloned from in this run, and why (labctl/golden.py choose): the golden image matching the
    lab's versions when there is one, else the base image. Asked once per run."""
    from labctl import golden

    def choose():
        if not hasattr(ctx.provider, "golden_source"):  # a provider without images of its own (static machines)
            return golden.Source(ctx.lab.base_image, None, ctx.lab.base_image)
        return golden.choose(ctx.lab, ctx.provider, ctx.state)

    return ctx.once("vms:source", choose)


class Vms(Phase):
    name = "vms"
    scope = "node"
    description = "VMs cloned, sized and running with an address"

    def check(self, ctx, target: Target) -> Check:
        _, node = ctx.node(target.node)
        vm = ctx.provider.get(node.name)
        if node.static:  # an existing machine (labctl/providers/static.py): it only has to answer
            return Check(vm.running, f"static machine at {node.address}: SSH "
                         + ("answers" if vm.running else "does not answer"))
        if vm is None:
            return Check(False, f"no VM yet: clone {source(ctx).why}")
        if not ownership.owns(ctx.state, target.cluster, node.name):
            if ctx.options.get("adopt"):
                return Check(False, f"VM {node.name} exists and was not created by labctl: adopt it (--adopt)")
            return Check(False, f"VM {node.name} exists but labctl did not create it: refused (see --adopt)")
        differences = _differences(vm, node)
        if differences:
            restart = " (stop, resize, start)" if vm.running else ""
            return Check(False, ", ".join(differences) + restart)
        if not vm.running:
            return Check(False, f"VM is {vm.state}: start it")
        # seen running just above; Context.address keeps the answer for the run (the connections reuse it)
        address = ctx.address(node, running=True)
        if not address:
            return Check(False, "running, but no IP address yet")
        return Check(True, f"running at {address}")

    def apply(self, ctx, target: Target) -> str:
        _, node = ctx.node(target.node)
        provider = ctx.provider
        if node.static:  # never created nor started: one that does not answer is refused, saying so
            provider.start(node)
            return f"static machine at {node.address}: SSH answers"
        done: list[str] = []
        vm = provider.get(node.name)
        running = vm is not None and vm.running
        if vm is None:
            src = source(ctx)
            if src.golden:  # the lab's versions have a golden image: the node phases will find their work done
                ctx.note(f"{node.name}: cloning {src.why}")
                created = provider.create(node, image=src.image)
            else:
                ctx.once(f"image:{ctx.lab.base_image}", lambda: _ensure_image(ctx))
                ctx.note(f"{node.name}: cloning {ctx.lab.base_image}")
                created = provider.create(node)
            if not created:  # someone made one with that name in the meantime
                raise ownership.not_ours(node.name)
            ownership.claim(ctx.state, node.name, "created")
            done.append("cloned")
            done += provider.configure(node)  # a fresh clone has the image's size
        elif not ownership.owns(ctx.state, target.cluster, node.name):
            if not ctx.options.get("adopt"):
                raise ownership.not_ours(node.name)
            ownership.claim(ctx.state, node.name, "adopted")
            ctx.note(f"{node.name}: adopting the existing VM (--adopt)")
            done.append("adopted")
        if vm is not None and (differences := _differences(vm, node)):
            if node.disk < vm.disk:  # refused before anything is stopped: a shrink is a mistake in clusters.json
                raise shrink_error(node.name, node.disk, vm.disk)
            if running:
                ctx.note(f"{node.name}: stopping to apply {', '.join(differences)}; it starts again right after")
                done.append(f"stopped ({provider.stop(node)})")
                running = False
            done += provider.configure(node)
        if not running:
            done.append(start(ctx, node))
        return ", ".join(done + [f"running at {wait_for_address(ctx, node)}"])


def start(ctx, node) -> str:
    ctx.note(f"{node.name}: starting")
    ctx.provider.start(node)
    ctx.drop_transport(node.name)  # a connection from before the VM stopped is dead
    return "started"


def wait_for_address(ctx, node) -> str:
    """The running VM's address, waiting up to the provider's ip_wait_seconds (e.g. for a DHCP lease). Called once
    the VM runs (the caller saw it, or started it and `start` returned only once it was running)."""
    wait = ctx.provider.ip_wait_seconds
    address = ctx.provider.ip(node, wait=wait, running=True)
    if not address:
        raise ProviderError(
            f"{node.name}: running, but no IP address after {wait} s",
            hint=f"the guest may still be booting: run the command again (it resumes here) or raise "
            f"provider.{ctx.lab.provider.type}.ip_wait_seconds; see {ctx.provider.log_path(node)}",
        )
    return address

phase = Vms()

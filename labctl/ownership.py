"""Which VMs are labctl's: it changes, starts and deletes only VMs it created, or that the user told it to adopt.

A VM of the user's that happens to carry a lab node's name must never be resized, started or deleted by labctl.

The mark is labctl's own record, the `vms` table of .labctl/state.json, written the moment a clone succeeds (or an
adoption is asked for). Tart has no labels or metadata on a VM (reference/tart-cli.md), its VM directory is Tart's
private storage, and a mark inside the guest could only be read over SSH, after labctl would already have resized
and started the VM. So a lost .labctl fails closed: every existing VM is treated as not labctl's until the user
says `labctl install --adopt`; nothing is touched on a guess.

Labs made by a labctl before this record: a node whose `vms` step succeeded according to state.json was already
managed by labctl, so it counts as labctl's (no refusal after an upgrade).
"""

from __future__ import annotations

import time

from .errors import StepError

TABLE = "vms"


def owns(state, cluster: str, name: str) -> bool:
    """True when the VM `name` (node of `cluster`) is labctl's: created or adopted by it, or recorded by an older
    labctl's `vms` step (migration)."""
    data = state.read()
    step = data.get("steps", {}).get(f"vms:{cluster}/{name}") or {}
    # a succeeded step only: a refusal by this labctl is recorded as failed and must not become ownership
    return name in data.get(TABLE, {}) or step.get("status") in ("changed", "unchanged")


def claim(state, name: str, how: str) -> None:
    """Record that labctl created (`how` = "created") or adopted ("adopted") the VM `name`."""
    entry = {"how": how, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    state.update(lambda data: data.setdefault(TABLE, {}).__setitem__(name, entry))


def release(state, name: str) -> None:
    """Forget the VM `name` (it was deleted): a VM made later under that name is not labctl's unless it makes it."""
    if state.path.exists():
        state.update(lambda data: data.get(TABLE, {}).pop(name, None))


def left_alone(name: str) -> str:
    """The check's word for an existing VM labctl did not create, where a phase skips it (destroy, shutdown)."""
    return f"left alone: VM {name} was not created by labctl"


def not_ours(name: str) -> StepError:
    """The refusal for an existing VM labctl did not create."""
    return StepError(
        f"{name}: a VM with this name already exists and labctl did not create it; it is left untouched",
        hint=f"rename or delete your VM `{name}`, or rename the node in clusters.json; or, if it is this lab's VM "
        "(e.g. .labctl was lost), run `labctl install --adopt` to let labctl manage it (resize, start and, with "
        "`destroy`, delete it)",
    )

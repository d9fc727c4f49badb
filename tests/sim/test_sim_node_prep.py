"""Node preparation against what a real guest does on its own, in the simulated lab: swap that a service turns back
on at every boot (zram-tools' zramswap.service), swap that comes back at boot from a source added after the install,
and apt busy on a fresh VM (unattended-upgrades holding its locks) or failing for a reason that is not the network.
"""

from __future__ import annotations

import pytest

from tests.sim import sim_swap
from tests.sim.sim_node import FRESH
from tests.sim.test_sim_e2e import events, labctl, sim, summary_of  # noqa: F401 (sim: the fixture)

pytestmark = pytest.mark.sim


def result(out: str, step: str) -> dict:
    return next(e for e in events(out) if e.get("event") == "result" and e["step"] == step)


def test_swap_from_a_service_stays_off_after_shutdown_and_boot(sim):
    """zramswap.service runs swapon itself: masking dev-zram0.swap (all prepare did) leaves it to turn swap on at
    the next boot, and the kubelet then never starts. prepare disables the service; swap stays off after a reboot."""
    worker = sim.nodes["dev-worker1"]
    worker.image = sim_swap.zramswap_image(FRESH)
    worker.fresh()
    first = labctl("--json", "install", "--cluster", "dev")
    assert first.code == 0, summary_of(first.out)["failed"]
    assert labctl("--json", "shutdown", "--cluster", "dev").code == 0
    boot = labctl("--json", "boot", "--cluster", "dev")
    assert boot.code == 0, summary_of(boot.out)["failed"]
    assert sim.world()["nodes"]["dev-worker1"]["swap"] == []
    prepare = result(first.out, "prepare:dev/dev-worker1")
    assert "swap-services" in prepare["detail"], prepare
    assert worker.facts["swap"]["services"]["zramswap.service"]["enabled"] == "masked"
    assert result(boot.out, "swap:dev/dev-worker1")["status"] == "unchanged"
    assert sim.world()["clusters"]["dev"]["nodes"]["dev-worker1"]["ready"] == "True"
    assert summary_of(labctl("--json", "install", "--cluster", "dev").out)["counts"]["changed"] == 0


def test_boot_turns_off_swap_that_came_back_and_disables_its_source(sim):
    """Swap added after the install (a swap file in fstab) is on after the next boot: `boot` finds it, turns it off
    and comments the fstab line out, instead of waiting for a kubelet that does not start with swap on."""
    assert labctl("--json", "install", "--cluster", "dev").code == 0
    worker = sim.nodes["dev-worker1"]
    worker.facts["texts"]["/etc/fstab"] += "\n/swapfile none swap sw 0 0"
    assert labctl("--json", "shutdown", "--cluster", "dev").code == 0
    boot = labctl("--json", "boot", "--cluster", "dev")
    assert boot.code == 0, summary_of(boot.out)["failed"]
    swap = result(boot.out, "swap:dev/dev-worker1")
    assert swap["status"] == "changed" and "/etc/fstab turns swap on at boot (/swapfile)" in swap["detail"], swap
    assert sim.world()["nodes"]["dev-worker1"]["swap"] == []
    assert "/swapfile" not in [ln.split()[0] for ln in worker.text("/etc/fstab").splitlines()
                               if ln.split() and not ln.startswith("#")]
    assert result(labctl("--json", "boot", "--cluster", "dev").out, "swap:dev/dev-worker1")["status"] == "unchanged"


# ---- apt busy on a fresh VM, and apt errors that are not the network -------------------------------------------

def test_install_waits_while_unattended_upgrades_holds_apt_then_succeeds(sim):
    """A fresh VM's unattended-upgrades holds apt's lists lock for 90 s: the runtime script waits for it (it failed
    at once: apt-get's DPkg::Lock::Timeout does not cover that lock) and the install goes through."""
    sim.nodes["dev-worker1"].apt.lock_held_for = 90
    first = labctl("--json", "install", "--cluster", "dev")
    assert first.code == 0, summary_of(first.out)["failed"]
    assert sim.nodes["dev-worker1"].apt.lock_held_for == 0
    assert sim.world()["nodes"]["dev-worker1"]["containerd"]["running"]


def test_apt_held_past_the_deadline_names_the_lock_and_unattended_upgrades(sim):
    sim.nodes["dev-worker1"].apt.lock_held_for = 3600
    first = labctl("--json", "install", "--cluster", "dev")
    assert first.code == 1
    failed = result(first.out, "runtime:dev/dev-worker1")
    assert failed["status"] == "failed"
    assert "apt is busy — /var/lib/apt/lists/lock has been held by process 812 (/usr/bin/python3 " \
           "/usr/bin/unattended-upgrade)" in failed["detail"], failed
    said = summary_of(first.out)["failed"]
    assert "cannot reach" not in str(said) and "network" not in str(said), said
    assert "wait until it finishes" in str(said)


def test_a_repository_apt_refuses_is_not_reported_as_a_network_fault(sim):
    """apt-get update reaches pkgs.k8s.io but refuses its Release file (a key it does not have): its own message
    and next step, never "cannot reach pkgs.k8s.io … check its network and DNS"."""
    sim.nodes["dev-worker1"].apt.kubernetes_repo_error = (
        "Err:1 https://pkgs.k8s.io/core:/stable:/v1.35/deb  InRelease\n  The following signatures couldn't be "
        "verified because the public key is not available: NO_PUBKEY 234654DA9A296436\n"
        "E: The repository 'https://pkgs.k8s.io/core:/stable:/v1.35/deb  InRelease' is not signed.")
    first = labctl("--json", "install", "--cluster", "dev")
    assert first.code == 1
    failed = result(first.out, "kubepkgs:dev/dev-worker1")
    assert failed["status"] == "failed"
    assert "a repository's signature does not verify against its key" in failed["detail"], failed
    said = summary_of(first.out)["failed"]
    assert "cannot reach" not in str(said) and "network" not in str(said), said
    assert "kubernetes-apt-keyring.gpg" in str(said)

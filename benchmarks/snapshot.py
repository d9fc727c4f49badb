"""Snapshot restore vs a full install of the same lab, in the simulated lab, with install_sim.py's latency model.

Each run builds a fresh simulated world (benchmarks/install_sim.py: the same MODEL, scale and fake-tart clock),
installs the lab (timed: the full install), saves a snapshot (`labctl snapshot save`; timed, for the record), then
restores it (timed): the lab's VMs replaced by copies of the snapshot's (a `tart clone` each, MODEL "tart:clone"),
booted (MODEL "boot": until the guest has a lease), the address repair that a copy's new MAC makes necessary
(reference/tart-cli.md, clone: a copy gets a new MAC, so a new lease), and the wait until every node is Ready.

Modelled here beyond install_sim.MODEL (estimates, seconds on a real Mac, scaled like the rest):
  repair.control-plane  20  new API server/etcd certificates, static pods restarted (kubeadm certs renew + kubelet)
  repair.node-ip         5  kubelet's --node-ip rewritten, kubelet restarted
  shutdown.poweroff      5  `systemctl poweroff` in the guest until the VM is off (FAKE_TART_SHUTDOWN_DELAY)

Prints min / median / max over --runs (≥ 3) of each figure and the ratio restore / install.

    python benchmarks/snapshot.py [--scale 10] [--runs 3] [--clusters N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from install_sim import MODEL, lab_document, measure, print_summary, require_ok, scaled, sim_world  # noqa: E402

from labctl import lab as flows  # noqa: E402
from labctl import snapshots  # noqa: E402
from labctl.engine import Selection  # noqa: E402
from tests.sim.sim_lab import SimLab  # noqa: E402

RESTORE_MODEL = {"repair.control-plane": 20.0, "repair.node-ip": 5.0}
SHUTDOWN_SECONDS = 5.0


def one_run(scale: float, document: dict) -> dict[str, float]:
    """A fresh simulated world: install, snapshot save, snapshot restore; their wall seconds."""
    out = {}
    with sim_world(scale, document, "labctl-bench-snap-",
                   {"FAKE_TART_SHUTDOWN_DELAY": str(SHUTDOWN_SECONDS / scale)}) as (_, fake, config):
        with SimLab(config, fake, latency=scaled({**MODEL, **RESTORE_MODEL}, scale)):
            session = flows.LabSession.open(config)
            started = time.monotonic()
            summary = flows.install(session, flows.RunOptions(Selection()))
            out["install s"] = time.monotonic() - started
            require_ok(summary, "the install")
            started = time.monotonic()
            snapshots.save(session, "bench")
            out["snapshot save s"] = time.monotonic() - started
            started = time.monotonic()
            snapshots.restore(session, "bench")
            out["snapshot restore s"] = time.monotonic() - started
    out["restore / install"] = out["snapshot restore s"] / out["install s"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0, help="divide every modelled duration by this")
    parser.add_argument("--runs", type=int, default=3, help="runs to measure (≥ 3: min, median, max)")
    parser.add_argument("--clusters", type=int, default=None, help="N clusters copied from the shipped ones")
    args = parser.parse_args()
    document = lab_document(args.clusters)
    print(f"lab: {len(document['clusters'])} clusters, {sum(len(c['nodes']) for c in document['clusters'])} VMs; "
          f"scale 1/{args.scale:g}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    runs = measure(args.runs, lambda: one_run(args.scale, document))
    print_summary(runs, args.scale, 22, "restore / install", "{:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

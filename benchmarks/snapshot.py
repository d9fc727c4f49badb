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
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from install_sim import MODEL, lab_document, spread  # noqa: E402

from labctl import lab as flows  # noqa: E402
from labctl import snapshots  # noqa: E402
from labctl.engine import Selection  # noqa: E402
from tests.sim.fake_tart import FakeTart  # noqa: E402
from tests.sim.sim_lab import SimLab, lease_prefix  # noqa: E402

RESTORE_MODEL = {"repair.control-plane": 20.0, "repair.node-ip": 5.0}
SHUTDOWN_SECONDS = 5.0


def one_run(scale: float, document: dict) -> dict[str, float]:
    """A fresh simulated world: install, snapshot save, snapshot restore; their wall seconds."""
    work = Path(tempfile.mkdtemp(prefix="labctl-bench-snap-"))
    saved = dict(os.environ)
    nodes = [n for c in document["clusters"] for n in c["nodes"]]
    try:
        fake = FakeTart(work)
        os.environ.update(fake.env())
        os.environ.update({"FAKE_TART_LEASE_PREFIX": lease_prefix(), "FAKE_TART_IP_DELAY": str(MODEL["boot"] / scale),
                           "FAKE_TART_IP_POLL": str(1.0 / scale),
                           "FAKE_TART_SHUTDOWN_DELAY": str(SHUTDOWN_SECONDS / scale),
                           "LABCTL_HOST_MEMORY_MIB": str(max(256 * 1024, 2 * sum(n["memory"] for n in nodes))),
                           "LABCTL_HOST_CPUS": str(max(os.cpu_count() or 1, sum(n["cpu"] for n in nodes))),
                           "LABCTL_DEBUG_LOG": str(work / "debug.log"), "FAKE_TART_RUN_MAX": "3600"})
        config = work / "clusters.json"
        config.write_text(json.dumps(document, indent=2))
        latency = {key: seconds / scale for key, seconds in {**MODEL, **RESTORE_MODEL}.items() if key != "boot"}
        out = {}
        with SimLab(config, fake, latency=latency):
            session = flows.LabSession.open(config)
            started = time.monotonic()
            summary = flows.install(session, flows.RunOptions(Selection()))
            out["install s"] = time.monotonic() - started
            if not summary.ok:
                raise SystemExit(f"the install failed: {[(r.step.id, r.detail) for r in summary.failed]}")
            started = time.monotonic()
            snapshots.save(session, "bench")
            out["snapshot save s"] = time.monotonic() - started
            started = time.monotonic()
            snapshots.restore(session, "bench")
            out["snapshot restore s"] = time.monotonic() - started
        fake.kill_all()
        out["restore / install"] = out["snapshot restore s"] / out["install s"]
        return out
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0, help="divide every modelled duration by this")
    parser.add_argument("--runs", type=int, default=3, help="runs to measure (≥ 3: min, median, max)")
    parser.add_argument("--clusters", type=int, default=None, help="N clusters copied from the shipped ones")
    args = parser.parse_args()
    document = lab_document(args.clusters)
    print(f"lab: {len(document['clusters'])} clusters, {sum(len(c['nodes']) for c in document['clusters'])} VMs; "
          f"scale 1/{args.scale:g}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.scale, document))
        print(f"  run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()))
    print(f"\nsummary over {len(runs)} runs (min / median / max), scaled seconds (×{args.scale:g} for a real Mac's)")
    for name in runs[0]:
        print(f"  {name:<22} {spread([r[name] for r in runs], '{:.3f}')}")
    ratio = statistics.median(r["restore / install"] for r in runs)
    print(f"  median restore / install: {ratio:.3f} ({1 / ratio:.1f}× faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

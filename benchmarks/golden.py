"""Install from the golden image vs from the base image, in the simulated lab, with install_sim.py's latency model.

Each run builds two fresh simulated worlds (benchmarks/install_sim.py: the same MODEL, scale and fake-tart clock):
one installs the lab from the base image (timed); the other first builds the golden image (`labctl image build`,
timed for the record: it is paid once per version set, not per install) and then installs the lab, whose VMs are
cloned from it (timed). Prints min / median / max over --runs (≥ 3) and the ratio golden / base.

The model differs from install_sim.MODEL in one place, for both sides alike: prepare's 60 s are split by action
(what its script does for each), so that a clone of the image, which only needs its hostname, pays for that only:
  prepare.apply 2 (the script), :modules 20, :sysctl 20, :hostname 8, :machine-id 10 (a fresh base clone: all four)
  golden.bake 90 (image pulls, the build only)
Conservative: kubeadm init's and Cilium's image pulls (inside init.kubeadm and cni.helm-install) are NOT made
cheaper for the golden install, although its images are already there; a real install saves that too.

    python benchmarks/golden.py [--scale 10] [--runs 3] [--cluster NAME ...]
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

from labctl import golden  # noqa: E402
from labctl import lab as flows  # noqa: E402
from labctl.engine import Selection  # noqa: E402
from tests.sim.fake_tart import FakeTart  # noqa: E402
from tests.sim.sim_lab import SimLab, lease_prefix  # noqa: E402

PREPARE = {"prepare.apply": 2.0, "prepare.apply:modules": 20.0, "prepare.apply:sysctl": 20.0,
           "prepare.apply:hostname": 8.0, "prepare.apply:machine-id": 10.0}
BAKE = {"golden.bake": 90.0}


def world(scale: float, document: dict, clusters: list[str], from_golden: bool) -> dict[str, float]:
    """One fresh simulated world: (image build, then) install; their wall seconds."""
    work = Path(tempfile.mkdtemp(prefix="labctl-bench-golden-"))
    saved = dict(os.environ)
    nodes = [n for c in document["clusters"] for n in c["nodes"]]
    try:
        fake = FakeTart(work)
        os.environ.update(fake.env())
        os.environ.update({"FAKE_TART_LEASE_PREFIX": lease_prefix(), "FAKE_TART_IP_DELAY": str(MODEL["boot"] / scale),
                           "FAKE_TART_IP_POLL": str(1.0 / scale),
                           "LABCTL_HOST_MEMORY_MIB": str(max(256 * 1024, 2 * sum(n["memory"] for n in nodes))),
                           "LABCTL_HOST_CPUS": str(max(os.cpu_count() or 1, sum(n["cpu"] for n in nodes))),
                           "LABCTL_DEBUG_LOG": str(work / "debug.log"), "FAKE_TART_RUN_MAX": "3600",
                           "XDG_CACHE_HOME": str(work / "cache")})
        config = work / "clusters.json"
        config.write_text(json.dumps(document, indent=2))
        model = {k: v for k, v in MODEL.items() if k != "prepare.apply"} | PREPARE | BAKE
        latency = {key: seconds / scale for key, seconds in model.items() if key != "boot"}
        out = {}
        with SimLab(config, fake, latency=latency):
            session = flows.LabSession.open(config)
            if from_golden:
                started = time.monotonic()
                built = golden.build(session)
                out["image build s"] = time.monotonic() - started
                if not built.ok:
                    raise SystemExit(f"the build failed: {[(r.step.id, r.detail) for r in built.summary.failed]}")
            started = time.monotonic()
            summary = flows.install(session, flows.RunOptions(Selection(clusters=clusters)))
            out["install s"] = time.monotonic() - started
            if not summary.ok:
                raise SystemExit(f"the install failed: {[(r.step.id, r.detail) for r in summary.failed]}")
            changed = [r.step.id for r in summary.results if r.status == "changed"
                       and r.step.phase.name in ("runtime", "kubepkgs")]
            if from_golden and changed:
                raise SystemExit(f"the golden install redid node work: {changed}")
        fake.kill_all()
        return out
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0, help="divide every modelled duration by this")
    parser.add_argument("--runs", type=int, default=3, help="runs to measure (≥ 3: min, median, max)")
    parser.add_argument("--cluster", action="append", default=[], help="install only these clusters (repeatable)")
    args = parser.parse_args()
    document = lab_document(None)
    chosen = [c for c in document["clusters"] if not args.cluster or c["name"] in args.cluster]
    print(f"lab: {len(chosen)} clusters, {sum(len(c['nodes']) for c in chosen)} VMs installed; scale 1/{args.scale:g}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    runs = []
    for i in range(args.runs):
        base = world(args.scale, document, args.cluster, from_golden=False)
        gold = world(args.scale, document, args.cluster, from_golden=True)
        runs.append({"base install s": base["install s"], "image build s": gold["image build s"],
                     "golden install s": gold["install s"], "golden / base": gold["install s"] / base["install s"]})
        print(f"  run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()))
    print(f"\nsummary over {len(runs)} runs (min / median / max), scaled seconds (×{args.scale:g} for a real Mac's)")
    for name in runs[0]:
        print(f"  {name:<18} {spread([r[name] for r in runs], '{:.3f}')}")
    ratio = statistics.median(r["golden / base"] for r in runs)
    print(f"  median golden / base: {ratio:.3f} ({1 / ratio:.2f}× faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from install_sim import MODEL, lab_document, measure, print_summary, require_ok, scaled, sim_world  # noqa: E402

from labctl import golden  # noqa: E402
from labctl import lab as flows  # noqa: E402
from labctl.engine import Selection  # noqa: E402
from tests.sim.sim_lab import SimLab  # noqa: E402

PREPARE = {"prepare.apply": 2.0, "prepare.apply:modules": 20.0, "prepare.apply:sysctl": 20.0,
           "prepare.apply:hostname": 8.0, "prepare.apply:machine-id": 10.0}
BAKE = {"golden.bake": 90.0}


def world(scale: float, document: dict, clusters: list[str], from_golden: bool) -> dict[str, float]:
    """One fresh simulated world: (image build, then) install; their wall seconds."""
    model = {k: v for k, v in MODEL.items() if k != "prepare.apply"} | PREPARE | BAKE
    out = {}
    with sim_world(scale, document, "labctl-bench-golden-") as (work, fake, config):
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # the image cache: this world's own (sim_world restores)
        with SimLab(config, fake, latency=scaled(model, scale)):
            session = flows.LabSession.open(config)
            if from_golden:
                started = time.monotonic()
                built = golden.build(session)
                out["image build s"] = time.monotonic() - started
                require_ok(built.summary, "the build")
            started = time.monotonic()
            summary = flows.install(session, flows.RunOptions(Selection(clusters=clusters)))
            out["install s"] = time.monotonic() - started
            require_ok(summary, "the install")
            changed = [r.step.id for r in summary.results if r.status == "changed"
                       and r.step.phase.name in ("runtime", "kubepkgs")]
            if from_golden and changed:
                raise SystemExit(f"the golden install redid node work: {changed}")
    return out


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

    def one_run() -> dict[str, float]:
        base = world(args.scale, document, args.cluster, from_golden=False)
        gold = world(args.scale, document, args.cluster, from_golden=True)
        return {"base install s": base["install s"], "image build s": gold["image build s"],
                "golden install s": gold["install s"], "golden / base": gold["install s"] / base["install s"]}

    print_summary(measure(args.runs, one_run), args.scale, 18, "golden / base")
    return 0


if __name__ == "__main__":
    sys.exit(main())

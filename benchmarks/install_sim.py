"""Install wall time of the shipped lab (or N clusters of its shapes) in the simulated lab, vs the critical-path bound.

Every step's work is modelled in the proportions of a real install (seconds on a real Mac, see MODEL) and scaled
down (--scale, default /10: the parallel install takes about a minute, --parallel 1 about seven) — the simulated
nodes sleep that long per script, the fake tart gives a booting VM its address after the boot time. Why /10 and not
/100: every fake tart call is a process start (~40 ms here, more on a loaded machine) and the engine makes a few
hundred; the real tart pays the same per call, but next to steps that take minutes, not a tenth of a second. At /100
those fixed costs are a third of the critical path and measure the fake, not the engine. The fake's own waits
follow the same clock: `tart ip --wait` looks once a second in real tart, so once every 1/scale s here.

Measured: the install at default parallelism (`labctl install`: one worker per node), --runs times (one sample
says little on a shared machine: min, median and max of every figure are printed), against the critical-path
lower bound: the longest chain of modelled work through the engine's step graph (labctl.engine.build_steps), i.e.
what a perfect scheduler with unlimited workers and zero overhead would take. `--clusters N` installs N clusters
made from copies of the shipped ones (20 clusters: 50 VMs) instead of the shipped lab.

Targets (median): ≤ 1.10× the bound for the shipped lab, ≤ 1.25× with --clusters (measured on a quiet machine;
the load average is printed: other work here slows every process start). The realised critical path (each step's
start/end from the engine's events, walked back from the last step to finish) of the median run shows where the
time went: modelled work, overhead inside steps (tart calls, facts, API requests), or waiting for a worker.
`--sequential` adds one `--parallel 1` install for comparison (no target: it follows from the bound's).
`--ha` gives the shipped lab's prod cluster three masters (docs/ha.md): they join one at a time, its workers
together after them, in parallel with the other clusters.

    python benchmarks/install_sim.py [--scale 10] [--runs 3] [--clusters N] [--sequential] [--ha]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the simulated lab lives in the test tree (tests/sim)

from labctl import lab as flows
from labctl import model
from labctl.context import Context
from labctl.engine import Selection, Step, build_steps
from tests.sim.fake_tart import FakeTart
from tests.sim.sim_lab import SimLab, lease_prefix

# Seconds a real install spends per unit of work (Apple-silicon Mac, Ubuntu 24.04 guests, a good mirror).
MODEL = {
    "tart:clone": 2.0,  # APFS copy-on-write clone of the cached image
    "boot": 30.0,  # `tart run` → the guest has a DHCP lease (the fake's FAKE_TART_IP_DELAY)
    "facts": 1.0,  # the read-only probe (containerd config dump/default)
    "prepare.apply": 60.0,  # swap, modules, sysctls, hostname, machine-id (the brief's "apt prepare")
    "runtime.apply:install": 80.0,  # apt-get install containerd
    "runtime.apply:config": 10.0,  # write config.toml, restart containerd
    "kubepkgs.apply": 60.0,  # pkgs.k8s.io repository, kubeadm/kubelet/kubectl
    "endpoint.hosts": 0.5,
    "init.kubeadm": 120.0,  # image pulls + kubeadm init
    "join.token": 1.0,
    "join.kubeadm": 45.0,
    "join.upload-certs": 2.0,  # HA: the control-plane certificates under this run's key
    "endpoint.haproxy": 1.0,  # HA workers: haproxy.cfg + reload (the package came with kubepkgs)
    "cni.helm-binary": 5.0,
    "cni.helm-install": 120.0,  # helm upgrade --install --wait: agent, envoy, operator, Hubble images
    "stacks.helm-install": 90.0,  # per release: chart download, image pulls, helm's --wait
}

# The modelled work of each step of a fresh install, in order. Facts: one look per node phase (its check), plus
# runtime's second look between installing containerd and configuring it from its own default config.
STEP_WORK = {
    "vms": ["tart:clone", "boot"],
    "prepare": ["facts", "prepare.apply"],
    "runtime": ["runtime.apply:install", "facts", "runtime.apply:config"],
    "kubepkgs": ["facts", "kubepkgs.apply"],
    "init": ["endpoint.hosts", "init.kubeadm"],
    "join": ["endpoint.hosts", "join.token", "join.kubeadm"],
    "cni": ["cni.helm-binary", "cni.helm-install"],
    "nodeconfig": [],
    "stacks": [],  # a stack with Helm releases: the helm binary's script, then one install per release (weight())
}


def weight(step: Step, scale: float) -> float:
    work = sum(MODEL[key] for key in STEP_WORK[step.phase.name])
    if step.phase.name == "stacks":
        from labctl import stacks

        descriptor = stacks.catalogue().get(step.target.item)
        releases = len(descriptor.releases) if descriptor else 1
        if releases:  # a manifests-only stack runs no script (phases/stacks.py: _helm only for releases)
            work += MODEL["cni.helm-binary"] + MODEL["stacks.helm-install"] * releases
    return work / scale


def critical_path(steps: list[Step], scale: float) -> tuple[float, list[Step]]:
    """The longest chain of modelled work through the step graph (a step's dependencies may come after it in
    `steps`: stacks that require another cluster's, e.g. Argo CD's destinations)."""
    finish: dict[Step, float] = {}
    via: dict[Step, Step | None] = {}

    def done(step: Step) -> float:
        if step not in finish:
            before = max(step.deps, key=done, default=None)
            finish[step] = (done(before) if before else 0.0) + weight(step, scale)
            via[step] = before
        return finish[step]

    for step in steps:
        done(step)
    last = max(steps, key=lambda s: finish[s])
    chain = [last]
    while via[chain[-1]] is not None:
        chain.append(via[chain[-1]])
    return finish[last], chain[::-1]


class Timeline:
    """Start and end of every step (from the engine's events), and what each step spent its time on: tart calls,
    scripts on nodes (beyond their modelled duration), API requests. The engine runs a step in one worker thread
    and emits its "start" event from there, which is how a call is put down to its step."""

    def __init__(self):
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.current: dict[int, str] = {}
        self.spent: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        if event.step is None:
            return
        now = time.monotonic()
        if event.kind == "start":
            self.start[event.step.id] = now
            self.current[threading.get_ident()] = event.step.id
        elif event.kind == "result":
            self.end[event.step.id] = now

    def timed(self, what: str, fn, modelled=lambda *a, **k: 0.0):
        """Wrap `fn` so its wall time (minus its modelled part) and count go to the calling step."""

        def wrapper(*args, **kwargs):
            started = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                step = self.current.get(threading.get_ident())
                if step is not None:
                    with self.lock:
                        self.spent[step][what + " s"] += time.monotonic() - started - modelled(*args, **kwargs)
                        self.spent[step][what + " n"] += 1

        return wrapper


def lab_document(clusters: int | None) -> dict:
    """The shipped clusters.json, or one with `clusters` clusters copied round-robin from the shipped ones: names
    suffixed (platform-2, platform-2-master...), CIDRs and Cilium cluster IDs unique."""
    raw = json.loads((ROOT / "clusters.json").read_text())
    if clusters is None:
        return raw
    shipped = raw["clusters"]
    out = []
    for i in range(clusters):
        copy = json.loads(json.dumps(shipped[i % len(shipped)]))
        round_ = i // len(shipped)
        if round_:
            old = copy["name"]
            copy["name"] = f"{old}-{round_ + 1}"
            for node in copy["nodes"]:
                node["name"] = node["name"].replace(old, copy["name"], 1)
        copy["pod_cidr"] = f"10.{10 + i}.0.0/16"
        copy["service_cidr"] = f"10.{96 + i}.0.0/16"
        copy.setdefault("cilium", {})["cluster_id"] = i + 1
        out.append(copy)
    raw["clusters"] = out
    return raw


def with_ha(document: dict, cluster: str = "prod", masters: int = 3) -> dict:
    """`document` with `cluster`'s master copied into `masters` control planes (name2, name3, ...)."""
    out = json.loads(json.dumps(document))
    spec = next(c for c in out["clusters"] if c["name"] == cluster)
    first = next(n for n in spec["nodes"] if n["role"] == "master")
    extra = [{**first, "name": f"{first['name']}{i}"} for i in range(2, masters + 1)]
    at = spec["nodes"].index(first) + 1
    spec["nodes"][at:at] = extra
    return out


@contextlib.contextmanager
def sim_world(scale: float, document: dict, prefix: str = "labctl-bench-", env: dict[str, str] | None = None):
    """A fresh simulated world for `document` on the scaled clock: a fake tart in a new temporary directory, the
    environment set for it (plus `env`), clusters.json written there. Yields (work dir, FakeTart, clusters.json
    path); on a normal exit the fake's VMs are killed; the environment is restored and the directory removed
    either way."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    saved = dict(os.environ)
    nodes = [n for c in document["clusters"] for n in c["nodes"]]
    try:
        fake = FakeTart(work)
        os.environ.update(fake.env())
        os.environ.update({"FAKE_TART_LEASE_PREFIX": lease_prefix(), "FAKE_TART_IP_DELAY": str(MODEL["boot"] / scale),
                           "FAKE_TART_IP_POLL": str(1.0 / scale),  # real tart's once a second, on the scaled clock
                           # room for every VM: the benchmark measures the engine, not the host check
                           "LABCTL_HOST_MEMORY_MIB": str(max(256 * 1024, 2 * sum(n["memory"] for n in nodes))),
                           "LABCTL_HOST_CPUS": str(max(os.cpu_count() or 1, sum(n["cpu"] for n in nodes))),
                           "LABCTL_DEBUG_LOG": str(work / "debug.log"),
                           # the fake's safety net powers a VM off after FAKE_TART_RUN_MAX (300 s for tests); a
                           # sequential install at /10 runs longer than that
                           "FAKE_TART_RUN_MAX": "3600", **(env or {})})
        config = work / "clusters.json"
        config.write_text(json.dumps(document, indent=2))
        yield work, fake, config
        fake.kill_all()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)


def scaled(model: dict[str, float], scale: float) -> dict[str, float]:
    """SimLab's latency map: every modelled duration but "boot" (the fake tart's, set by sim_world) / `scale`."""
    return {key: seconds / scale for key, seconds in model.items() if key != "boot"}


def require_ok(summary, what: str) -> None:
    """Stop the benchmark (SystemExit naming the failed steps) unless `summary` (an engine run) succeeded."""
    if not summary.ok:
        raise SystemExit(f"{what} failed: {[(r.step.id, r.detail) for r in summary.failed]}")


def measure(count: int, one_run) -> list[dict[str, float]]:
    """`one_run()` `count` times, printing each run's figures; returns them."""
    runs = []
    for i in range(count):
        runs.append(one_run())
        print(f"  run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()))
    return runs


def print_summary(runs: list[dict[str, float]], scale: float, width: int, ratio: str, faster: str = "{:.2f}") -> None:
    """min / median / max of every figure over `runs` (names padded to `width`), then the median of the figure
    named `ratio` (a / b) and how many times faster a is than b (`faster`: its format)."""
    print(f"\nsummary over {len(runs)} runs (min / median / max), scaled seconds (×{scale:g} for a real Mac's)")
    for name in runs[0]:
        print(f"  {name:<{width}} {spread([r[name] for r in runs], '{:.3f}')}")
    median = statistics.median(r[ratio] for r in runs)
    print(f"  median {ratio}: {median:.3f} ({faster.format(1 / median)}× faster)")


def one_install(parallel: int, scale: float, document: dict) -> tuple[float, dict]:
    """A fresh simulated world, one `labctl install` of `document`; returns (wall seconds, what happened)."""
    with sim_world(scale, document) as (_, fake, config):
        with SimLab(config, fake, latency=scaled(MODEL, scale)) as sim:
            session = flows.LabSession.open(config)
            timeline = Timeline()
            instrument(sim, timeline)
            once = Context.once
            Context.once = timeline.timed("once", once)  # waiting for (or doing) what another step does once
            tart_mark = fake.mark()
            started = time.monotonic()
            try:
                summary = flows.install(session, flows.RunOptions(Selection(), parallel), emit=timeline)
            finally:
                Context.once = once
            wall = time.monotonic() - started
            require_ok(summary, "the install")
            steps = [r.step for r in summary.results]
            info = {"steps": steps, "timeline": timeline, "t0": started, "scripts": collections.Counter(sim.script_ids()),
                    "tart": collections.Counter(a[0] for a in fake.argvs(tart_mark))}
    info["path"] = realised_path(info, scale)
    return wall, info


def instrument(sim: SimLab, timeline: Timeline) -> None:
    """Measure, per step, the time in tart calls, in node scripts beyond their model, and in API requests."""
    provider = sim.provider
    provider._tart = timeline.timed("tart", provider._tart)
    transport_for = timeline.timed("connect", sim.transport_for)  # waits for the node's address, like SSH

    def transport(ctx, node):
        t = transport_for(ctx, node)
        t.run = timeline.timed("script", t.run, modelled=lambda script, **kw: sim.cost(script))
        return t

    sim.transport_for = transport
    kube_for = sim.kube_for

    def kube(ctx, cluster):
        k = kube_for(ctx, cluster)
        k._call = timeline.timed("api", k._call)
        return k

    sim.kube_for = kube
    flows.CONTEXT_OVERRIDES.update(sim.overrides())  # SimLab plugged its unwrapped factories in on entry


def realised_path(info: dict, scale: float) -> list[tuple[str, float, float, float]]:
    """Walk back from the step that finished last through the dependency that finished last: (step, waited for
    a worker after its dependencies were done, took, modelled)."""
    tl: Timeline = info["timeline"]
    by_id = {s.id: s for s in info["steps"]}
    step = by_id[max(tl.end, key=tl.end.get)]
    out = []
    while True:
        ready = max((tl.end[d.id] for d in step.deps), default=info["t0"])
        out.append((step.id, tl.start[step.id] - ready, tl.end[step.id] - tl.start[step.id], weight(step, scale)))
        if not step.deps:
            break
        step = max(step.deps, key=lambda d: tl.end[d.id])
    return out[::-1]


def through_a_worker_into_init(path: list[tuple[str, float, float, float]], steps: list[Step], lab) -> bool:
    """Does the realised path reach an `init` step from a node step of any node but its first control plane?"""
    by_id = {s.id: s for s in steps}
    for (before, *_), (step_id, *_) in zip(path, path[1:]):
        step, dep = by_id[step_id], by_id[before]
        if step.phase.name == "init" and dep.target.node:
            if dep.target.node != lab.cluster(step.target.cluster).masters[0].name:
                return True
    return False


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """min / median / max of one figure over the runs."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0, help="divide every modelled duration by this")
    parser.add_argument("--runs", type=int, default=3, help="installs to measure (≥ 3: min, median, max)")
    parser.add_argument("--clusters", type=int, default=None,
                        help="N clusters copied from the shipped ones instead of the shipped lab (20: 50 VMs)")
    parser.add_argument("--sequential", action="store_true", help="also one (long) --parallel 1 install")
    parser.add_argument("--ha", action="store_true", help="prod with three masters (an HA control plane)")
    args = parser.parse_args()

    document = lab_document(args.clusters)
    if args.ha:
        document = with_ha(document)
    session = flows.LabSession.open(ROOT / "clusters.json")
    lab = session.model if args.clusters is None and not args.ha else model.parse(json.dumps(document))
    steps = build_steps(lab, flows.phases_for("install"))
    bound, chain = critical_path(steps, args.scale)
    total = sum(weight(s, args.scale) for s in steps)
    target = 1.10 if args.clusters is None else 1.25
    print(f"lab: {len(lab.clusters)} clusters, {sum(len(c.nodes) for c in lab.clusters)} VMs; model: {len(steps)} "
          f"steps, {total:.2f}s of work in all, scale 1/{args.scale:g}; this machine: {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.2f} (other work here slows every tart call)")
    print(f"critical path (bound) {bound:.2f}s: " + " → ".join(f"{s.id} {weight(s, args.scale):.2f}" for s in chain))

    runs = []
    for i in range(args.runs):
        wall, info = one_install(0, args.scale, document)
        runs.append((wall, info))
        print(f"  run {i + 1}: {wall:.2f}s ({wall / bound:.3f}× the bound), load average {os.getloadavg()[0]:.2f}")
    walls = [wall for wall, _ in runs]
    figures = {
        "install s": walls,
        "install / bound": [w / bound for w in walls],
        "path: waited for a worker s": [sum(w for _, w, _, _ in info["path"]) for _, info in runs],
        "path: overhead in steps s": [sum(t - m for _, _, t, m in info["path"]) for _, info in runs],
        "tart calls": [sum(info["tart"].values()) for _, info in runs],
        "scripts": [sum(info["scripts"].values()) for _, info in runs],
    }
    median_run = sorted(runs, key=lambda r: r[0])[len(runs) // 2][1]
    info = median_run
    print(f"\nrealised critical path of the median run: step, waited for a worker, took, modelled "
          f"(took − modelled = overhead); tart calls {dict(info['tart'].most_common())}")
    spent = info["timeline"].spent
    for step_id, waited, took, modelled in info["path"]:
        parts = spent[step_id]
        where = ", ".join(f"{what} {parts[what + ' s']:.2f}s/{parts[what + ' n']}"
                          for what in ("tart", "connect", "script", "api", "once") if parts[what + " n"])
        print(f"    {step_id:<32} waited {waited:5.2f}s  took {took:5.2f}s  modelled {modelled:5.2f}s  "
              f"overhead {took - modelled:+.2f}s  ({where})")
    via_worker = sum(through_a_worker_into_init(info["path"], info["steps"], lab) for _, info in runs)
    print(f"  runs whose realised path reaches init through another node than its first control plane: "
          f"{via_worker} of {len(runs)}")

    if args.sequential:
        sequential = one_install(1, args.scale, document)[0]
        print(f"\n--parallel 1 (one step at a time): {sequential:.2f}s   (sum of modelled work {total:.2f}s), "
              f"speed-up {sequential / statistics.median(walls):.2f}×")

    print(f"\nsummary over {len(runs)} runs (min / median / max); bound {bound:.2f}s")
    for name, values in figures.items():
        print(f"  {name:<30} {spread(values, '{:.0f}' if name in ('tart calls', 'scripts') else '{:.3f}')}")
    ratio = statistics.median(figures["install / bound"])
    ok = ratio <= target
    print(f"  median install / bound {ratio:.3f} (target ≤ {target:.2f}): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

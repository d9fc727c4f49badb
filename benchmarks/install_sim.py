"""Install wall time of the shipped 4-cluster lab in the simulated lab, against the critical-path lower bound.

Every step's work is modelled in the proportions of a real install (seconds on a real Mac, see MODEL) and scaled
down (--scale, default /10: the parallel install takes about a minute, --parallel 1 about seven) — the simulated
nodes sleep that long per script, the fake tart gives a booting VM its address after the boot time. Why /10 and not
/100: every fake tart call is a process start (~40 ms here, more on a loaded machine) and the engine makes a few
hundred; the real tart pays the same per call, but next to steps that take minutes, not a tenth of a second. At /100
those fixed costs are a third of the critical path and measure the fake, not the engine. Three numbers:

- default parallelism (`labctl install`: one worker per node),
- `--parallel 1`, the predecessor's shape: one step after another,
- the critical-path lower bound: the longest chain of modelled work through the engine's step graph
  (labctl.engine.build_steps), i.e. what a perfect scheduler with unlimited workers and zero overhead would take.

Targets: parallel ≥ 3× faster than --parallel 1, and ≤ 1.15× the bound. When the bound is missed, the realised
critical path (each step's start/end from the engine's events, walked back from the last step to finish) shows
where the time went: modelled work, overhead inside steps (tart calls, facts, API requests), or waiting.

    python benchmarks/install_sim.py [--scale 10] [--no-sequential] [--runs 1]
"""

from __future__ import annotations

import argparse
import collections
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
    "stacks": ["cni.helm-binary"],  # then one helm install per release of the stack (weight())
}


def weight(step: Step, scale: float) -> float:
    work = sum(MODEL[key] for key in STEP_WORK[step.phase.name])
    if step.phase.name == "stacks":
        from labctl import stacks

        descriptor = stacks.catalogue().get(step.target.item)
        work += MODEL["stacks.helm-install"] * (len(descriptor.releases) if descriptor else 1)
    return work / scale


def critical_path(steps: list[Step], scale: float) -> tuple[float, list[Step]]:
    """The longest chain of modelled work through the step graph (steps come in dependency order)."""
    finish: dict[Step, float] = {}
    via: dict[Step, Step | None] = {}
    for step in steps:
        before = max(step.deps, key=lambda d: finish[d], default=None)
        finish[step] = (finish[before] if before else 0.0) + weight(step, scale)
        via[step] = before
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


def one_install(parallel: int, scale: float) -> tuple[float, dict]:
    """A fresh simulated world, one `labctl install`; returns (wall seconds, what happened)."""
    work = Path(tempfile.mkdtemp(prefix="labctl-bench-"))
    saved = dict(os.environ)
    try:
        fake = FakeTart(work)
        os.environ.update(fake.env())
        os.environ.update({"FAKE_TART_LEASE_PREFIX": lease_prefix(), "FAKE_TART_IP_DELAY": str(MODEL["boot"] / scale),
                           "LABCTL_HOST_MEMORY_MIB": str(256 * 1024), "LABCTL_DEBUG_LOG": str(work / "debug.log"),
                           # the fake's safety net powers a VM off after FAKE_TART_RUN_MAX (300 s for tests); a
                           # sequential install at /10 runs longer than that
                           "FAKE_TART_RUN_MAX": "3600"})
        config = work / "clusters.json"
        shutil.copy(ROOT / "clusters.json", config)
        latency = {key: seconds / scale for key, seconds in MODEL.items() if key != "boot"}
        with SimLab(config, fake, latency=latency) as sim:
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
            if not summary.ok:
                raise SystemExit(f"the install failed: {[(r.step.id, r.detail) for r in summary.failed]}")
            steps = [r.step for r in summary.results]
            info = {"steps": steps, "timeline": timeline, "t0": started, "scripts": collections.Counter(sim.script_ids()),
                    "tart": collections.Counter(a[0] for a in fake.argvs(tart_mark))}
        fake.kill_all()
        return wall, info
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0, help="divide every modelled duration by this")
    parser.add_argument("--runs", type=int, default=1, help="median of this many installs per shape")
    parser.add_argument("--no-sequential", action="store_true", help="skip the (long) --parallel 1 install")
    args = parser.parse_args()

    session = flows.LabSession.open(ROOT / "clusters.json")
    steps = build_steps(session.model, flows.phases_for("install"))
    bound, chain = critical_path(steps, args.scale)
    total = sum(weight(s, args.scale) for s in steps)
    print(f"model: {len(steps)} steps, {total:.2f}s of work in all, scale 1/{args.scale:g}; this machine: "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (other work here slows every tart call)")
    print(f"critical path (bound) {bound:.2f}s: " + " → ".join(f"{s.id} {weight(s, args.scale):.2f}" for s in chain))

    runs = [one_install(0, args.scale) for _ in range(args.runs)]
    parallel = statistics.median(wall for wall, _ in runs)
    info = runs[-1][1]
    print(f"\nparallel (default, one worker per node): {parallel:.2f}s   "
          f"scripts {sum(info['scripts'].values())} (facts {info['scripts']['facts']}), "
          f"tart calls {sum(info['tart'].values())} ({dict(info['tart'].most_common())})")
    print("  realised critical path: step, waited for a worker, took, modelled (took − modelled = overhead)")
    spent = info["timeline"].spent
    path = realised_path(info, args.scale)
    for step_id, waited, took, modelled in path:
        parts = spent[step_id]
        where = ", ".join(f"{what} {parts[what + ' s']:.2f}s/{parts[what + ' n']}"
                          for what in ("tart", "connect", "script", "api", "once") if parts[what + " n"])
        print(f"    {step_id:<32} waited {waited:5.2f}s  took {took:5.2f}s  modelled {modelled:5.2f}s  "
              f"overhead {took - modelled:+.2f}s  ({where})")

    sequential = None
    if not args.no_sequential:
        sequential = statistics.median(one_install(1, args.scale)[0] for _ in range(args.runs))
        print(f"\n--parallel 1 (one step at a time): {sequential:.2f}s   (sum of modelled work {total:.2f}s)")

    print("\nsummary")
    print(f"  parallel        {parallel:7.2f}s")
    if sequential is not None:
        print(f"  --parallel 1    {sequential:7.2f}s   speed-up {sequential / parallel:.2f}× (target ≥ 3×)")
    print(f"  critical path   {bound:7.2f}s   parallel / bound {parallel / bound:.3f} (target ≤ 1.15)")
    ok = parallel / bound <= 1.15 and (sequential is None or sequential / parallel >= 3)
    print(f"  {'targets met' if ok else 'TARGETS MISSED'}")
    if parallel / bound > 1.15:
        waited = sum(w for _, w, _, _ in path)
        overhead = sum(took - modelled for _, _, took, modelled in path)
        print(f"  on the realised critical path the steps waited {waited:.2f}s for workers in all and spent "
              f"{overhead:.2f}s beyond their model inside (tart calls, API requests, connections: see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

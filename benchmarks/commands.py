"""Wall time of whole `labctl` processes against the simulated, converged 10-node lab (the shipped clusters.json).

Measured, each as a fresh process (interpreter start, imports, the command's work), ≥ 3 runs, min/median/max:

| command                      | goal (median) | world                                                        |
| `labctl --help`              | ≤ 0.20 s      | none                                                         |
| `labctl validate`            | ≤ 0.25 s      | clusters.json only                                           |
| `labctl plan` without tart   | ≤ 0.35 s      | no `tart` on PATH                                            |
| `labctl status`              | ≤ 1.50 s      | the converged lab, no latency model (issue 14's figures)     |
| `labctl install` (no-op)     | ≤ 5.00 s      | the converged lab, at the real-latency model (PROBE_LATENCY) |

How a separate process reaches the simulated lab, which lives in this (the benchmark's) process:
- tart: the fake tart on PATH (tests/sim/fake_tart.py, served by its fork server) — the same as the tests;
- the API servers: the simulated clusters' TLS API servers on loopback, through the kubeconfigs labctl wrote;
- SSH: the simulated nodes answer scripts in this process; the measured process gets them through a Unix socket
  (`_simclient.py`, imported before labctl's CLI): one "connection" per node, then `run`/`put`/`get` by call.
  The SSH handshake is modelled by PROBE_LATENCY["connect"] (paramiko's import is not paid: ~0.45 s, see
  cli_startup.py), the status SSH banner by each node's simulated sshd.
Exit status 1 when a median misses its goal. Other work on the machine slows every figure: the load average is
printed with them.

    python benchmarks/commands.py [--runs 3] [--only status,install] [--install-latency real|none]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the simulated lab lives in the test tree (tests/sim)

from labctl import lab as flows  # noqa: E402
from labctl.engine import Selection  # noqa: E402
from tests.sim.fake_tart import FakeTart  # noqa: E402
from tests.sim.sim_lab import SimLab, lease_prefix  # noqa: E402
from tests.sim.sim_server import SimServer  # noqa: E402

GOALS = {"--help": 0.20, "validate": 0.25, "plan (no tart)": 0.35, "status": 1.50, "install (no-op)": 5.00}

# The real-latency model of what a no-op install waits for, in seconds on a real Apple-silicon Mac with Tart VMs.
# "facts": the read-only probe script (benchmarks/install_sim.py MODEL["facts"], the issue's "real-Mac probe
# latency"). The rest are estimates of this benchmark, not measurements: "connect" an SSH handshake with key
# exchange and public-key auth to a guest on the host's bridge (paramiko, one per node and run); "tart:*" one tart
# read command (a Swift process start plus a Virtualization.framework/VM-directory read). Replace them with figures
# measured on a Mac when there are some.
PROBE_LATENCY = {"facts": 1.0, "connect": 0.3, "tart:list": 0.1, "tart:get": 0.1, "tart:ip": 0.1}


def timed(argv: list[str], env: dict, cwd: Path, runs: int, expect=(0,)) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        if done.returncode not in expect:
            raise SystemExit(f"`{' '.join(argv[-3:])}` exited {done.returncode}:\n{done.stdout[-2000:]}"
                             f"\n{done.stderr[-2000:]}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated: help,validate,plan,status,install")
    parser.add_argument("--install-latency", choices=("real", "none"), default="real")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(","))) or {"help", "validate", "plan", "status", "install"}
    exe = shutil.which("labctl") or sys.exit("labctl is not on PATH: install the project first")
    work = Path(tempfile.mkdtemp(prefix="labctl-cmds-"))
    saved = dict(os.environ)
    results: dict[str, list[float]] = {}
    try:
        config = work / "clusters.json"
        shutil.copy(ROOT / "clusters.json", config)
        base = {**saved, "LABCTL_HOST_MEMORY_MIB": str(256 * 1024), "LABCTL_CONFIG": str(config)}
        no_tart = {**base, "PATH": os.pathsep.join(p for p in saved.get("PATH", "").split(os.pathsep)
                                                   if not (Path(p) / "tart").exists())}
        if "help" in only:
            timed([exe, "--help"], base, work, 1)  # warm the page cache and .pyc files
            results["--help"] = timed([exe, "--help"], base, work, args.runs)
        if "validate" in only:
            results["validate"] = timed([exe, "validate"], base, work, args.runs)
        if "plan" in only:
            results["plan (no tart)"] = timed([exe, "plan"], no_tart, work, args.runs, expect=(0, 1, 2, 3, 4))
        if only & {"status", "install"}:
            results.update(measure_lab(exe, work, config, base, args, only))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()
    print(f"this machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    ok = True
    for name, times in results.items():
        median = statistics.median(times)
        met = median <= GOALS[name]
        ok &= met
        print(f"{name:<18} median {median:6.3f}s  min {min(times):6.3f}s  max {max(times):6.3f}s  ({len(times)} runs)"
              f"  goal ≤ {GOALS[name]:.2f}s {'ok' if met else 'MISSED'}")
    print("goals met" if ok else "GOALS MISSED")
    return 0 if ok else 1


def measure_lab(exe: str, work: Path, config: Path, base: dict, args, only: set[str]) -> dict[str, list[float]]:
    """Install the lab in this process (no latency), then time status and a no-op install as separate processes."""
    fake = FakeTart(work)
    env = {**base, **fake.env(), "FAKE_TART_LEASE_PREFIX": lease_prefix(), "FAKE_TART_IP_DELAY": "0"}
    os.environ.update(env)
    out: dict[str, list[float]] = {}
    with SimLab(config, fake) as sim:
        summary = flows.install(flows.LabSession.open(config), flows.RunOptions(Selection(), 0))
        if not summary.ok:
            raise SystemExit(f"the install failed: {[(r.step.id, r.detail) for r in summary.failed]}")
        authkey = os.urandom(16)
        server = SimServer(sim, str(work / "sim.sock"), authkey)
        child = {**env, "LABCTL_BENCH_SIM": str(work / "sim.sock"), "LABCTL_BENCH_KEY": authkey.hex(),
                 "PYTHONPATH": str(Path(__file__).resolve().parent)}
        argv = [sys.executable, "-c", "import _simclient; _simclient.main()"]
        try:
            if "status" in only:
                timed([*argv, "status"], child, work, 1)  # also: the lab is healthy (exit 0)
                out["status"] = timed([*argv, "status"], child, work, args.runs)
            if "install" in only:
                latency = PROBE_LATENCY if args.install_latency == "real" else {}
                sim.latency = {k: v for k, v in latency.items() if k != "connect"}
                server.latency = latency.get("connect", 0.0)
                child["LABCTL_BENCH_TART_LATENCY"] = json.dumps({k: v for k, v in latency.items()
                                                                  if k.startswith("tart:")})
                mark = sim.mark()
                out["install (no-op)"] = timed([*argv, "--json", "install"], child, work, args.runs)
                applied = [c.script for c in sim.calls[mark:] if c.script.endswith(".apply")]
                if applied:
                    raise SystemExit(f"the install was not a no-op: it ran {applied}")
        finally:
            server.close()
    fake.kill_all()
    return out


if __name__ == "__main__":
    sys.exit(main())

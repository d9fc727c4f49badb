"""How long `labctl --help` takes, wall time, median of N runs (target: ≤ 0.25 s on the 2-core test machines).

Start-up matters because every command pays it: the CLI imports only typer at start and each command imports
what it needs (the kubernetes client alone costs ~0.85 s, paramiko ~0.45 s). On a quiet machine `--help` takes
about 0.07 s, typer's import two thirds of it (`python -X importtime -m labctl --help`); the load average is
printed because other work on the machine stretches every figure.

    python benchmarks/cli_startup.py [--runs 7] [--max 0.25]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def measure(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--max", type=float, default=0.25, help="exit 1 when the median is above this (seconds)")
    args = parser.parse_args()
    exe = shutil.which("labctl") or sys.exit("labctl is not on PATH: install the project first")
    measure([exe, "--help"], 1)  # warm the page cache and .pyc files
    results = {
        "labctl --help": measure([exe, "--help"], args.runs),
        "python -c pass (floor)": measure([sys.executable, "-c", "pass"], args.runs),
    }
    for name, times in results.items():
        print(f"{name:<24} median {statistics.median(times):.3f}s  min {min(times):.3f}s  max {max(times):.3f}s"
              f"  ({args.runs} runs)")
    median = statistics.median(results["labctl --help"])
    verdict = "ok" if median <= args.max else "TOO SLOW"
    print(f"target ≤ {args.max:.2f}s: {verdict}  (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    return 0 if median <= args.max else 1


if __name__ == "__main__":
    sys.exit(main())

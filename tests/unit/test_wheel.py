"""A wheel built from the repository works outside the checkout: templates, phases and the starter file are inside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_wheel_works_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next(dist.glob("labctl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "labctl/phases/__init__.py" in names
    assert "labctl/data/clusters.json" in names
    assert any(n.startswith("labctl/templates/") for n in names)
    assert not any(n.startswith(("phases/", "templates/", "tests/")) for n in names)  # nothing loose at the top

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    # -I would drop PYTHONPATH; -S would drop the dependencies. PYTHONPATH first is enough to shadow the checkout.
    env = {**os.environ, "PYTHONPATH": str(site), "LABCTL_DEBUG_LOG": str(tmp_path / "debug.log")}

    def labctl(*args):
        return subprocess.run([sys.executable, "-m", "labctl", *args], cwd=work, env=env, capture_output=True,
                              text=True)

    where = subprocess.run([sys.executable, "-c", "import labctl, labctl.resources as r; "
                            "print(labctl.__file__); print(r.TEMPLATES); print(r.phases_package().__name__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(site)) for p in where[:2]) and where[2] == "labctl.phases"

    assert labctl("init").returncode == 0
    assert (work / "clusters.json").read_bytes() == (ROOT / "clusters.json").read_bytes()
    assert labctl("validate").returncode == 0
    plan = labctl("--json", "plan")
    assert plan.returncode == 0, plan.stderr
    steps = json.loads(plan.stdout)["steps"]
    assert {s["node"] for s in steps if s["node"]} == {
        "platform-master", "platform-worker1", "platform-worker2", "dev-master", "dev-worker1",
        "staging-master", "staging-worker1", "prod-master", "prod-worker1", "prod-worker2",
    }

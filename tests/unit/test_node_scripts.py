"""The node scripts themselves: every template, rendered the way the phases render it, passes `bash -n` and
shellcheck; the read-only facts script also runs for real on this machine and its JSON is valid NodeFacts."""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from labctl.remote.facts import Action, NodeFacts, probe_params
from labctl.render import script
from tests.conftest import shellcheck
from tests.unit.test_node_phases import CASES, load_facts, world



def phase_renders() -> dict[str, str]:
    """name → script text: every case's script as its phase renders it, plus each template with every action."""
    out: dict[str, str] = {"facts": script("facts", "node/facts.sh.j2", **probe_params()).text}
    for case in CASES:
        if "actions" not in case["expect"]:
            continue
        module = importlib.import_module(f"phases.{case['phase']}")
        ctx, target = world(case)
        out[case["id"]] = module.render(ctx, target, module.todo(ctx, target)).text

    def every(*names: str) -> list[Action]:
        return [Action(n, "") for n in names]

    prepare = importlib.import_module("phases.prepare")
    facts = load_facts("ubuntu-24.04-swap")
    all_prepare = every("swapoff", "swap-fstab", "swap-units", "swap-services", "zram-generator", "modules", "sysctl",
                        "hostname", "machine-id")
    out["prepare/every-action"] = script("prepare.apply", "node/prepare.sh.j2", **prepare.params(
        facts, "dev-master", all_prepare)).text
    runtime = importlib.import_module("phases.runtime")
    facts = load_facts("containerd-2.0-no-systemdcgroup")
    out["runtime/every-action"] = script("runtime.apply", "node/runtime.sh.j2", **runtime.params(
        facts, "1.35.6", "1.7.28", every("config", "crictl", "enable", "restart"))).text
    out["runtime/install"] = script("runtime.apply", "node/runtime.sh.j2", **runtime.params(
        facts, "1.35.6", "1.7.28", every("install"))).text
    kubepkgs = importlib.import_module("phases.kubepkgs")
    out["kubepkgs/every-action"] = script("kubepkgs.apply", "node/kubepkgs.sh.j2", **kubepkgs.params(
        "1.35.6", every("repo", "install", "hold", "enable-kubelet"))).text
    # static machines' own (labctl/static_nodes.py)
    out["reach/static"] = script("preflight.reach", "node/reach.sh.j2", host="192.168.1.10", port=6443, seconds=5).text
    out["kubeadm-reset/static"] = script("destroy.kubeadm-reset", "node/kubeadm-reset.sh.j2").text
    return out


RENDERS = phase_renders()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("node-scripts")
    paths = {}
    for i, (name, text) in enumerate(sorted(RENDERS.items())):
        paths[name] = root / f"{i:02d}-{name.replace('/', '_')}.sh"
        paths[name].write_text(text)
    return paths


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_bash_parses_it(name, rendered):
    result = subprocess.run(["bash", "-n", str(rendered[name])], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_shellcheck_is_clean(rendered):
    # One run over every script: shellcheck starts slowly, the scripts are many.
    argv = [shellcheck(), "--shell=bash", "--severity=style", "--format=gcc", *map(str, rendered.values())]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_template_is_covered():
    templates = {p.name for p in (Path(__file__).resolve().parents[2] / "templates" / "node").glob("*.sh.j2")}
    used = {"facts.sh.j2"} | {f"{name.split('/')[0]}.sh.j2" for name in RENDERS if "/" in name}
    assert {"facts.sh.j2", "prepare.sh.j2", "runtime.sh.j2", "kubepkgs.sh.j2"} <= used
    assert templates - used <= templates - {"facts.sh.j2", "prepare.sh.j2", "runtime.sh.j2", "kubepkgs.sh.j2"}


def test_values_reach_the_script_quoted():
    prepare = importlib.import_module("phases.prepare")
    hostile = "x'; touch /tmp/labctl-pwned #"
    params = prepare.params(load_facts("ubuntu-24.04-fresh"), hostile, [Action("hostname", "")])
    text = script("prepare.apply", "node/prepare.sh.j2", **params).text
    assert f"name={shlex.quote(hostile)}\n" in text


def test_kubepkgs_writes_nothing_before_the_key_is_fetched():
    kubepkgs = importlib.import_module("phases.kubepkgs")
    text = script("kubepkgs.apply", "node/kubepkgs.sh.j2", **kubepkgs.params("1.35.6", [Action("repo", "")])).text
    fetch = text.index('curl -fsSL')
    assert text.index('mv -f -- "$keyring.labctl-new"') > fetch
    assert text.index('"$list_file.labctl-new"') > fetch
    assert "cannot reach pkgs.k8s.io" in text and "exit 10" in text


# ---- the facts script, for real ------------------------------------------------------------------------------------

def run_facts(*, params: dict | None = None, as_user: list[str] | None = None) -> tuple[NodeFacts, str]:
    text = script("facts", "node/facts.sh.j2", **{**probe_params(), **(params or {})}).text
    result = subprocess.run([*(as_user or []), "bash", "-s"], input=text, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    return NodeFacts.parse(result.stdout, "localhost"), result.stdout


def test_facts_script_runs_here_and_describes_this_machine():
    facts, stdout = run_facts()
    assert stdout.count("\n") == 1, "one JSON object on one line"
    assert facts.uid == os.getuid()
    assert facts.hostname == os.uname().nodename
    assert facts.kernel == os.uname().release
    assert facts.cpus and facts.cpus >= 1
    assert facts.memory.total_kb and facts.memory.available_kb is not None
    assert facts.disk.total_kb and facts.disk.available_kb is not None
    assert len(facts.load) == 3
    assert any(i.name == "lo" for i in facts.interfaces)
    if Path("/etc/os-release").exists():
        assert facts.os.id
    if Path("/etc/machine-id").exists():
        assert facts.machine_id == Path("/etc/machine-id").read_text().strip()
    assert set(facts.modules) == {"overlay", "br_netfilter"}
    assert facts.text("/etc/hosts") == Path("/etc/hosts").read_text().rstrip("\n")


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to drop to nobody")
def test_facts_script_works_unprivileged():
    facts, _ = run_facts(as_user=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert facts.uid == 65534
    assert facts.product_uuid is None or isinstance(facts.product_uuid, str)


def test_facts_script_escapes_any_text_into_valid_json(tmp_path):
    nasty = tmp_path / "nasty.txt"
    content = 'quote " backslash \\ tab \t cr \r bell \x07 esc \x1b unit-sep \x1f amp & dollar $(x) utf-8 é ✓\nlast'
    nasty.write_bytes(content.encode())
    missing = tmp_path / "missing.txt"
    facts, _ = run_facts(params={"texts": [str(nasty), str(missing)], "files": [str(nasty), str(missing)]})
    assert facts.text(str(nasty)) == content
    assert facts.text(str(missing)) is None
    assert facts.files == {str(nasty): True, str(missing): False}


def test_facts_script_is_read_only(tmp_path):
    """Run it with a scratch HOME/TMPDIR: it creates nothing there (it writes no files at all)."""
    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    text = script("facts", "node/facts.sh.j2", **probe_params()).text
    subprocess.run(["bash", "-s"], input=text, capture_output=True, text=True, env=env, check=True, timeout=60)
    assert list(tmp_path.iterdir()) == []

"""Node phases (prepare, runtime, kubepkgs) from data, and the NodeFacts model they read.

The cases live in tests/fixtures/node_phase_cases.json: facts a node reports → exactly the actions the phase
takes (and the parameters its script gets), a no-op with its reason, or an error. One generic runner below.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import tomllib
from pathlib import Path

import pytest

from labctl import model
from labctl.engine import Check, Target
from labctl.errors import CommandError, StepError, TransportError
from labctl.remote import facts as facts_mod
from labctl.remote.base import Result
from labctl.remote.facts import FactsError, NodeFacts, describe, parse_version

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FACTS_DIR = FIXTURES / "facts"
CASES = json.loads((FIXTURES / "node_phase_cases.json").read_text())["cases"]

LAB = {
    "clusters": [
        {"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16", "nodes": [
            {"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
            {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 4096},
        ]},
        {"name": "prod", "pod_cidr": "10.40.0.0/16", "service_cidr": "10.99.0.0/16", "nodes": [
            {"name": "prod-master", "role": "master", "cpu": 2, "memory": 4096},
        ]},
    ]
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_facts(name: str, override: dict | None = None) -> NodeFacts:
    data = json.loads((FACTS_DIR / f"{name}.json").read_text())
    return NodeFacts.model_validate(merge(data, override or {}))


def make_lab(versions: dict | None = None) -> model.Lab:
    return model.parse(json.dumps({**LAB, "versions": versions or {}}), "test-lab.json")


class RecordingTransport:
    def __init__(self, node: str, world: FakeCtx):
        self.node = node
        self.world = world
        self.runs = []

    def run(self, script, *, sudo=False, timeout=None, check=True):
        self.runs.append((script, sudo))
        return self.world.answer(self.node, script)


class FakeCtx:
    """The slice of labctl.context.Context the node phases use: the lab, cached facts, once, transports."""

    def __init__(self, lab: model.Lab, facts: dict[str, NodeFacts]):
        self.lab = lab
        self._facts = dict(facts)
        self._once: dict = {}
        self.transports: dict[str, RecordingTransport] = {}
        self.invalidated: list[str] = []
        self.fact_calls: list[str] = []
        self.after_run: dict[str, NodeFacts] = {}  # script id + actions → facts of the node afterwards
        self.fail: CommandError | None = None

    def facts(self, name: str, refresh: bool = False) -> NodeFacts:
        self.fact_calls.append(name)
        if name not in self._facts:
            raise TransportError(name, "does not answer (test)")
        return self._facts[name]

    def once(self, key, fn):
        if key not in self._once:
            self._once[key] = fn()
        return self._once[key]

    def invalidate(self, name: str) -> None:
        self.invalidated.append(name)

    def transport(self, name: str) -> RecordingTransport:
        return self.transports.setdefault(name, RecordingTransport(name, self))

    def answer(self, node: str, script) -> Result:
        if self.fail is not None:
            raise self.fail
        key = f"{script.id}:{','.join(script.params.get('actions', []))}"
        if key in self.after_run:
            self._facts[node] = self.after_run[key]
        return Result(0, "done\n")


def world(case: dict) -> tuple[FakeCtx, Target]:
    node = case.get("node", "dev-worker1")
    facts = {node: load_facts(case["facts"], case.get("override"))}
    for peer, machine_id in case.get("peers", {}).items():
        facts[peer] = facts[node].model_copy(update={"machine_id": machine_id})
    lab = make_lab(case.get("versions"))
    cluster, _ = next((c, n) for c, n in lab.nodes if n.name == node)
    return FakeCtx(lab, facts), Target(cluster.name, node)


# ---- the generic case runner ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_node_phase_case(case):
    module = importlib.import_module(f"phases.{case['phase']}")
    ctx, target = world(case)
    expect = case["expect"]

    if "error" in expect:
        with pytest.raises(StepError, match=re.escape(expect["error"])):
            module.phase.check(ctx, target)
        return

    check = module.phase.check(ctx, target)
    if "noop" in expect:
        assert check == Check(True, expect["noop"])
        assert module.phase.apply(ctx, target) is None
        assert not any(t.runs for t in ctx.transports.values()), "a no-op must not run anything on the node"
        return

    todo = module.todo(ctx, target)
    assert [a.name for a in todo] == expect["actions"]
    assert check == Check(False, describe(todo))
    assert case.get("detail", "") in check.detail
    script = module.render(ctx, target, todo)
    assert script.id == f"{case['phase']}.apply"
    assert script.params["actions"] == expect["actions"]
    for key, value in case.get("params", {}).items():
        assert script.params[key] == value, key


def test_every_case_names_an_existing_fixture_and_every_fixture_is_used():
    used = {c["facts"] for c in CASES}
    present = {p.stem for p in FACTS_DIR.glob("*.json")}
    assert used <= present
    assert present <= used, f"unused fixtures: {sorted(present - used)}"


# ---- apply: what runs on the node, in which order ----------------------------------------------------------------

def test_prepare_apply_runs_the_script_once_with_sudo_and_forgets_the_facts():
    ctx, target = world({"facts": "ubuntu-24.04-swap", "node": "dev-master"})
    note = importlib.import_module("phases.prepare").phase.apply(ctx, target)
    (script, sudo), = ctx.transport("dev-master").runs
    assert (script.id, sudo) == ("prepare.apply", True)
    assert note == "swapoff, swap-fstab, swap-units, modules, sysctl, hostname"
    assert ctx.invalidated == ["dev-master"]


def test_prepare_asks_each_silent_peer_once_per_run():
    ctx, target = world({"facts": "ubuntu-24.04-fresh", "node": "dev-worker1"})
    prepare = importlib.import_module("phases.prepare")
    prepare.phase.check(ctx, target)
    prepare.phase.check(ctx, target)
    assert ctx.fact_calls.count("prod-master") == 1  # unreachable: remembered, not retried by every check


def test_runtime_installs_first_then_configures_from_the_installed_default():
    ctx, target = world({"facts": "ubuntu-24.04-prepared"})
    ctx.after_run["runtime.apply:install"] = load_facts("containerd-1.7-cgroupfs")
    note = importlib.import_module("phases.runtime").phase.apply(ctx, target)
    runs = [s for s, _ in ctx.transport("dev-worker1").runs]
    assert [s.params["actions"] for s in runs] == [["install"], ["config", "crictl"]]
    assert note == "install, config, crictl"
    config = tomllib.loads(runs[1].params["config"])
    runc = config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is True
    assert config["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"] == "registry.k8s.io/pause:3.10.1"
    assert ctx.invalidated == ["dev-worker1", "dev-worker1"]


@pytest.mark.parametrize(
    ("phase", "facts", "code", "message", "hint"),
    [
        ("kubepkgs", "containerd-2.2-ready", 10, "cannot reach pkgs.k8s.io", "outbound HTTPS"),
        ("kubepkgs", "containerd-2.2-ready", 11, "Kubernetes 1.35.6 is not in pkgs.k8s.io v1.35", "released patch"),
        ("runtime", "debian-12-containerd-1.6", 12, "older than versions.containerd 1.7.28", "base image"),
    ],
)
def test_script_exit_codes_become_clear_errors(phase, facts, code, message, hint):
    ctx, target = world({"facts": facts})
    ctx.fail = CommandError("dev-worker1", f"{phase}.apply", code, "the script's last words")
    with pytest.raises(StepError, match=re.escape(message)) as err:
        importlib.import_module(f"phases.{phase}").phase.apply(ctx, target)
    assert hint in err.value.hint
    assert "the script's last words" in str(err.value)
    assert ctx.invalidated == ["dev-worker1"]


def test_other_command_failures_pass_through_unchanged():
    ctx, target = world({"facts": "containerd-2.2-ready"})
    ctx.fail = CommandError("dev-worker1", "kubepkgs.apply", 100, "E: dpkg was interrupted")
    with pytest.raises(CommandError):
        importlib.import_module("phases.kubepkgs").phase.apply(ctx, target)


# ---- containerd's config, edited as TOML ---------------------------------------------------------------------------

# One fixture per real `containerd config default`: Debian's 1.6.20, 1.7.x, 2.0.x without SystemdCgroup, 2.x.
DEFAULTS = [
    "debian-12-containerd-1.6", "containerd-1.7-cgroupfs", "containerd-2.0-no-systemdcgroup", "containerd-2.2-ready",
]


@pytest.mark.parametrize("fixture", DEFAULTS)
@pytest.mark.parametrize("kubernetes", ["1.33.7", "1.35.6"])
def test_edited_default_config_has_systemd_cgroup_and_kubeadms_sandbox(fixture, kubernetes):
    runtime = importlib.import_module("phases.runtime")
    facts = load_facts(fixture)
    edited = runtime.containerd_config(facts.containerd.config_default, runtime.sandbox_image(kubernetes))
    # What containerd would report for that file (the dump of a complete config is the config itself).
    after = facts.model_copy(update={"containerd": facts.containerd.model_copy(update={"config_dump": edited})})
    assert after.containerd_systemd_cgroup is True
    assert after.sandbox_image == runtime.sandbox_image(kubernetes)
    assert after.containerd_layout == facts.containerd_layout or facts.containerd_layout is None
    # editing the result again changes nothing: the phase converges
    assert runtime.containerd_config(edited, runtime.sandbox_image(kubernetes)) == edited


def test_missing_runc_options_table_is_created():
    runtime = importlib.import_module("phases.runtime")
    default = 'version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd]\ndefault_runtime_name = "runc"\n'
    cfg = tomllib.loads(runtime.containerd_config(default, "registry.k8s.io/pause:3.10.1"))
    runc = cfg["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["options"] == {"SystemdCgroup": True}
    assert cfg["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == "registry.k8s.io/pause:3.10.1"


def test_config_layout_labctl_does_not_know_is_refused():
    with pytest.raises(StepError, match="version = 1"):
        importlib.import_module("phases.runtime").containerd_config('[plugins.cri]\nsandbox_image = "x"\n', "y")


@pytest.mark.parametrize(
    ("kubernetes", "pause"),
    [("1.31.14", "3.10"), ("1.33.7", "3.10"), ("1.34.3", "3.10.1"), ("1.35.6", "3.10.1"), ("1.36.1", "3.10.2")],
)
def test_sandbox_image_follows_kubeadm(kubernetes, pause):
    assert importlib.import_module("phases.runtime").sandbox_image(kubernetes) == f"registry.k8s.io/pause:{pause}"


# ---- NodeFacts ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", sorted(p.stem for p in FACTS_DIR.glob("*.json")))
def test_every_fixture_is_what_the_facts_script_prints(fixture):
    text = (FACTS_DIR / f"{fixture}.json").read_text()
    facts = NodeFacts.parse(text, fixture)
    assert set(json.loads(text)) == set(NodeFacts.model_fields) - {"schema_"} | {"schema"}
    assert set(facts.files) == set(facts_mod.FILES) and set(facts.texts) == set(facts_mod.TEXTS)


@pytest.mark.parametrize(
    ("fixture", "version", "layout", "cgroup", "sandbox"),
    [
        ("containerd-1.7-cgroupfs", "1.7.28", 2, False, "registry.k8s.io/pause:3.8"),
        ("containerd-2.0-no-systemdcgroup", "2.0.5", 3, False, "registry.k8s.io/pause:3.10"),
        ("containerd-2.2-ready", "2.2.0", 3, True, "registry.k8s.io/pause:3.10.1"),
        ("debian-12-containerd-1.6", "1.6.20", 2, False, "registry.k8s.io/pause:3.6"),
        ("containerd-io-cri-disabled", "1.7.27", 2, False, None),
        ("ubuntu-24.04-fresh", None, None, None, None),
    ],
)
def test_containerd_facts(fixture, version, layout, cgroup, sandbox):
    facts = load_facts(fixture)
    assert (facts.containerd_version, facts.containerd_layout) == (version, layout)
    assert (facts.containerd_systemd_cgroup, facts.sandbox_image) == (cgroup, sandbox)


def test_kube_package_facts():
    facts = load_facts("kube-one-patch-behind")
    assert facts.kube_versions == {"kubeadm": "1.35.5", "kubelet": "1.35.5", "kubectl": "1.35.5"}
    assert facts.held >= {"kubeadm", "kubelet", "kubectl"}
    assert facts.k8s_repo_minor == "1.35"
    fresh = load_facts("ubuntu-24.04-fresh")
    assert fresh.kube_versions == {"kubeadm": None, "kubelet": None, "kubectl": None}
    assert (fresh.held, fresh.k8s_repo_minor) == (set(), None)


def test_kubeadm_state_facts():
    joined = load_facts("joined-one-patch-behind")
    assert (joined.kubeadm_ran, joined.joined, joined.control_plane_initialised) == (True, True, False)
    assert load_facts("converged").kubeadm_ran is False


def test_swap_and_name_facts():
    fstab = "# /old none swap sw 0 0\n/swap.img none swap sw 0 0\nUUID=1 / ext4 defaults 0 1"
    facts = load_facts("ubuntu-24.04-swap", {"texts": {"/etc/fstab": fstab}})
    assert facts.fstab_swap == ["/swap.img"]
    assert facts.swap_units_to_mask == ["swap.img.swap"]
    prepared = load_facts("ubuntu-24.04-prepared")
    assert prepared.hosts_resolves("dev-worker1") and not prepared.hosts_resolves("dev-master")
    assert prepared.ipv4 == {"enp0s1": ["192.168.64.12"]}


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("containerd github.com/containerd/containerd 1.7.28", (1, 7, 28)),
        ("containerd github.com/containerd/containerd/v2 2.1.9+unknown ", (2, 1, 9)),
        ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", (1, 6, 20)),
        ("containerd containerd.io v1.7.27 05044ec0a9a7", (1, 7, 27)),
        ("", None),
    ],
)
def test_parse_version(text, version):
    assert parse_version(text) == version


def test_package_versions_drop_epoch_and_revision():
    pkg = facts_mod.Package(version="1:1.35.6-1.1", status="hi ")
    assert (pkg.upstream, pkg.installed, pkg.held) == ("1.35.6", True, True)
    assert facts_mod.Package(version="1.35.6-1.1", status="rc ").installed is False


def test_output_before_the_json_is_tolerated():
    text = (FACTS_DIR / "converged.json").read_text()
    facts = NodeFacts.parse("sudo: unable to resolve host ubuntu\n" + json.dumps(json.loads(text)), "dev-worker1")
    assert facts.kube_versions["kubeadm"] == "1.35.6"


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("bash: line 12: syntax error near unexpected token\n{\"schema\": 1, \"uid\"", "printed no valid JSON"),
        ("", "printed no valid JSON"),
        ("[1, 2]", "not an object"),
        ('{"schema": 0}', "schema 0, expected 2"),
        ('{"schema": 1, "uid": "root"}', "uid"),
        ('{"schema": 1, "surprise": true}', "surprise"),
    ],
)
def test_unusable_output_names_the_node_and_shows_the_tail(output, problem):
    with pytest.raises(FactsError) as err:
        NodeFacts.parse(output, "dev-master")
    message = str(err.value)
    assert message.startswith("dev-master: ") and problem in message
    assert output.splitlines()[-1][:40] in message if output else "(no output)" in message


def test_gather_runs_the_facts_script_with_sudo():
    class Transport:
        node = "dev-master"

        def run(self, script, *, sudo=False, timeout=None, check=True):
            self.call = (script, sudo, timeout)
            return Result(0, (FACTS_DIR / "converged.json").read_text())

    transport = Transport()
    facts = facts_mod.gather(transport)
    script, sudo, timeout = transport.call
    assert (script.id, sudo) == ("facts", True) and timeout
    assert script.params["modules"] == ["overlay", "br_netfilter"]
    assert script.params["files"] == list(facts_mod.FILES)
    assert facts.containerd_systemd_cgroup is True

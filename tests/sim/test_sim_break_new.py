"""Adversarial checks of this session's new features, driven through the CLI in the simulated lab: snapshots (bad
names and order, interrupts, secrets, --json), golden images, static nodes. Each test states the behaviour a user
relies on; the fixtures are those of test_sim_snapshots.py and test_sim_static.py."""

from __future__ import annotations

import json
import stat

import pytest

from labctl.providers.tart import TartProvider
from tests.sim.test_sim_e2e import ctrl_c_raises, events, labctl
from tests.sim.test_sim_static import lab_json, open_static_lab, prefix  # noqa: F401 (prefix: the fixture)
from tests.sim.test_sim_snapshots import LAB, NODES, ok, sim, world  # noqa: F401 (sim: the fixture)

pytestmark = pytest.mark.sim


def refused(*args: str, code: int = 2):
    """`labctl ARGS` ends with exit `code`, an `error:` line and no traceback; returns its result."""
    result = labctl(*args)
    assert result.code == code, (result.code, result.out, result.err)
    assert "error:" in result.err and "Traceback" not in result.err + result.out, result.err
    return result


# ---- snapshots: bad input and wrong order ------------------------------------------------------------------------

def test_restore_or_delete_of_a_missing_snapshot_is_bad_input(sim, fake_tart):
    ok("install", "--only", "vms")
    ok("snapshot", "save", "one", "--yes")
    mark = fake_tart.mark()
    for verb in ("restore", "delete"):
        result = refused("snapshot", verb, "nope", "--yes") if verb == "restore" else refused("snapshot", verb, "nope")
        assert "no snapshot 'nope'" in result.err and "one" in result.err  # names the snapshots there are
    assert not [a for a in fake_tart.argvs(mark) if a[0] in ("delete", "clone", "stop", "run")]


def test_snapshot_of_a_lab_never_installed_is_refused_and_keeps_nothing(sim, fake_tart, tmp_path):
    result = refused("snapshot", "save", "early", "--yes")
    assert "has no VM" in result.err and "labctl install" in result.err
    assert fake_tart.vms() == []
    assert not (tmp_path / ".labctl/snapshots/early").exists()
    assert json.loads(ok("--json", "snapshot", "list"))["snapshots"] == []


def test_a_taken_snapshot_name_and_an_unknown_cluster_are_bad_input(sim, fake_tart):
    ok("install", "--only", "vms")
    ok("snapshot", "save", "one", "--yes")
    assert "already exists" in refused("snapshot", "save", "one", "--yes").err
    assert "nosuch" in refused("snapshot", "save", "two", "--cluster", "nosuch", "--yes").err


def test_destroy_with_snapshots_when_there_are_none(sim, fake_tart, tmp_path):
    ok("install", "--only", "vms")
    ok("destroy", "--yes", "--snapshots")
    assert fake_tart.vms() == [] and not (tmp_path / ".labctl").exists()


def test_a_damaged_snapshot_can_be_deleted_as_its_error_says(sim, fake_tart, tmp_path):
    ok("install", "--only", "vms")
    ok("snapshot", "save", "one", "--yes")
    (tmp_path / ".labctl/snapshots/one/snapshot.json").write_text("{ not json")
    result = refused("snapshot", "restore", "one", "--yes", code=1)
    assert "damaged" in result.err and "labctl snapshot delete one" in result.err
    ok("snapshot", "delete", "one")
    assert not (tmp_path / ".labctl/snapshots/one").exists()


def test_a_snapshot_whose_vm_was_deleted_by_hand_is_refused_before_the_lab_is_touched(sim, fake_tart):
    ok("install", "--only", "vms,prepare")
    ok("snapshot", "save", "one", "--yes")
    fake_tart.tart("delete", "labctl-snap-one--dev-worker1")
    mark = fake_tart.mark()
    result = refused("snapshot", "restore", "one", "--yes", code=1)
    assert "labctl-snap-one--dev-worker1" in result.err and "damaged" in result.err
    assert not [a for a in fake_tart.argvs(mark) if a[0] in ("delete", "clone", "stop")]
    ok("snapshot", "delete", "one")  # what is left of it goes
    assert fake_tart.vms() == NODES


def test_install_after_a_restore_changes_nothing(sim, fake_tart):
    ok("install")
    ok("snapshot", "save", "base", "--yes")
    ok("snapshot", "restore", "base", "--yes")
    result = labctl("--json", "install")
    assert result.code == 0, result.err
    changed = [e["step"] for e in events(result.out) if e.get("event") == "result" and e["status"] == "changed"]
    assert changed == []
    ok("snapshot", "delete", "base")
    assert labctl("install").code == 0


# ---- snapshots: Ctrl-C never loses the lab -------------------------------------------------------------------------

def ctrl_c_at_copy(monkeypatch, nth: int, after: bool = False) -> None:
    """The `nth` VM copy (1-based) of this process is interrupted by a Ctrl-C: before tart ran, or right after.
    `monkeypatch`: a `monkeypatch.context()`, so that undoing it keeps the fixtures' own patches."""
    real, seen = TartProvider.clone_vm, []

    def clone_vm(self, source, target):
        seen.append(target)
        if len(seen) == nth and not after:
            raise KeyboardInterrupt
        real(self, source, target)
        if len(seen) == nth:
            raise KeyboardInterrupt

    monkeypatch.setattr(TartProvider, "clone_vm", clone_vm)


@pytest.mark.parametrize("after", [False, True], ids=["before-a-copy", "after-a-copy"])
def test_ctrl_c_in_snapshot_save_keeps_the_lab_and_leaves_a_removable_unfinished_snapshot(
        sim, fake_tart, monkeypatch, after):
    ok("install")
    before = world(sim)
    with monkeypatch.context() as patch, ctrl_c_raises():
        ctrl_c_at_copy(patch, 2, after)
        result = labctl("snapshot", "save", "half", "--yes")
    assert result.code == 130 and "interrupted" in result.err and "Traceback" not in result.err
    # it says what it left and what to run, not only "interrupted"
    assert "snapshot half: interrupted while copying" in result.err, result.err
    assert "labctl snapshot delete half" in result.err and "labctl boot" in result.err, result.err
    assert {vm for vm in fake_tart.vms() if not vm.startswith("labctl-snap-")} == set(NODES)
    rows = json.loads(ok("--json", "snapshot", "list"))["snapshots"]
    assert [(r["name"], r["complete"]) for r in rows] == [("half", False)]
    assert "unfinished" in refused("snapshot", "restore", "half", "--yes").err
    ok("snapshot", "delete", "half")
    assert fake_tart.vms() == NODES  # the copies it made went with it
    ok("boot")
    assert world(sim) == before


@pytest.mark.parametrize("nth, after", [(1, False), (2, True)], ids=["first-node-deleted", "second-node-copied"])
def test_ctrl_c_in_snapshot_restore_then_restore_again_gives_back_the_lab(sim, fake_tart, monkeypatch, nth, after):
    ok("install")
    before = world(sim)
    ok("snapshot", "save", "base", "--yes")
    with monkeypatch.context() as patch, ctrl_c_raises():
        ctrl_c_at_copy(patch, nth, after)
        result = labctl("snapshot", "restore", "base", "--yes")
    assert result.code == 130 and "Traceback" not in result.err
    assert "snapshot base: restore interrupted" in result.err and "replaced so far:" in result.err, result.err
    assert "labctl snapshot restore base` again" in result.err, result.err
    ok("snapshot", "restore", "base", "--yes")
    assert world(sim) == before
    assert set(fake_tart.vms()) == set(NODES) | {f"labctl-snap-base--{n}" for n in NODES}


# ---- snapshots: secrets and --json -------------------------------------------------------------------------------

def test_snapshot_files_are_private_and_no_secret_is_printed(sim, fake_tart, tmp_path):
    ok("install")
    key = tmp_path / ".labctl/ssh/id_ed25519"  # the sim's transport needs none: a stand-in the snapshot must keep
    key.parent.mkdir(mode=0o700, exist_ok=True)
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWxhYi1rZXktbWF0ZXJpYWw=\n"
                   "-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    outputs = [labctl("--json", "snapshot", "save", "base", "--yes"), labctl("snapshot", "list"),
               labctl("--json", "snapshot", "list"), labctl("--json", "snapshot", "restore", "base", "--yes"),
               labctl("snapshot", "restore", "base", "--yes")]
    assert all(r.code == 0 for r in outputs), [r.err for r in outputs]
    folder = tmp_path / ".labctl/snapshots/base"
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    saved = json.loads((folder / "secrets.json").read_text())
    key_lines = [line for line in saved["lab_key"].splitlines() if line and "PRIVATE KEY" not in line]
    kube = (folder / "kubeconfig/dev").read_text()
    secrets = [*key_lines, *[v for c in saved["credentials"].values() for v in c.values() if isinstance(v, str)]]
    secrets += [line.split(":", 1)[1].strip() for line in kube.splitlines()
                if line.strip().startswith(("client-key-data:", "token:"))]
    assert key_lines and secrets
    for r in outputs:
        for secret in secrets:
            assert secret not in r.out + r.err


def test_snapshot_json_outputs_are_valid_and_carry_the_documented_fields(sim, fake_tart):
    ok("install", "--only", "vms,prepare")
    saved = labctl("--json", "snapshot", "save", "one", "--yes")
    assert saved.code == 0
    lines = [json.loads(line) for line in saved.out.splitlines() if line.strip()]  # NDJSON: every line parses
    last = lines[-1]
    assert last["event"] == "snapshot" and last["action"] == "saved"
    assert {"name", "created", "clusters", "provider", "nodes", "versions", "complete"} <= set(last["snapshot"])
    rows = json.loads(ok("snapshot", "list", "--json"))["snapshots"]
    assert set(rows[0]) == {"name", "created", "clusters", "complete", "size_bytes"}
    restored = labctl("--json", "snapshot", "restore", "one", "--yes")
    assert restored.code == 0
    last = [json.loads(line) for line in restored.out.splitlines() if line.strip()][-1]
    assert last["action"] == "restored" and last["notes"] == []
    assert json.loads(ok("snapshot", "delete", "one", "--json")) == {
        "deleted": "one", "vms": [f"labctl-snap-one--{n}" for n in NODES]}
    error = labctl("--json", "snapshot", "restore", "one", "--yes")
    doc = json.loads(error.out.strip().splitlines()[-1])
    assert error.code == 2 and doc["event"] == "error" and doc["exit_code"] == 2


# ---- static nodes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["", "192.168.1.50:22", "ssh://gpu-box1", "gpu box"])
def test_a_static_address_that_ssh_cannot_reach_is_refused_by_validate(tmp_path, monkeypatch, address):
    raw = lab_json("192.168.1")
    raw["clusters"][0]["nodes"][2]["address"] = address
    (tmp_path / "clusters.json").write_text(json.dumps(raw))
    monkeypatch.chdir(tmp_path)
    result = refused("validate")
    assert "clusters[0].nodes[2].address" in result.err


def test_a_static_node_named_like_a_vm_is_refused(tmp_path, monkeypatch):
    raw = lab_json("192.168.1")
    raw["clusters"][0]["nodes"][2]["name"] = "gpu-worker1"
    (tmp_path / "clusters.json").write_text(json.dumps(raw))
    monkeypatch.chdir(tmp_path)
    assert "'gpu-worker1' is already used" in refused("validate").err


@pytest.fixture
def static_sim(fake_tart, tmp_path, monkeypatch, prefix):
    """test_sim_static.py's lab: Tart VMs on a bridged network plus two static GPU machines."""
    with open_static_lab(fake_tart, tmp_path, monkeypatch, prefix) as lab:
        yield lab


def test_a_snapshot_of_a_cluster_with_static_machines_is_refused_before_the_lab_stops(static_sim, fake_tart):
    assert labctl("install").code == 0
    before = static_sim.world()
    mark = fake_tart.mark()
    result = refused("snapshot", "save", "base", "--yes")
    assert "gpu-box1" in result.err and "static" in result.err
    assert not [a for a in fake_tart.argvs(mark) if a[0] in ("stop", "clone")]
    assert static_sim.world() == before  # nothing was cordoned, drained or stopped


# ---- golden images -------------------------------------------------------------------------------------------------

def test_image_build_without_a_lab_is_bad_input(tmp_path, monkeypatch, fake_tart):
    monkeypatch.chdir(tmp_path)
    assert "clusters.json" in refused("image", "build", "--yes").err
    assert fake_tart.vms() == []


def test_image_build_when_the_first_control_plane_is_a_static_machine(static_sim, fake_tart):
    raw = json.loads(static_sim.config.read_text())
    nodes = raw["clusters"][0]["nodes"]
    nodes[0], nodes[2] = {**nodes[2], "role": "master", "name": "gpu-box0"}, nodes[0] | {"role": "worker"}
    static_sim.config.write_text(json.dumps(raw))
    mark = fake_tart.mark()
    result = labctl("--json", "image", "build", "--yes")
    assert result.code == 0, result.out[-2000:]
    # sized like the lab's VMs (2 CPUs, 4 GiB): a static machine has no size of its own to give it
    sets = [a for a in fake_tart.argvs(mark) if a[0] == "set"]
    sizes = [(a[a.index(flag) + 1]) for a in sets for flag in ("--cpu", "--memory") if flag in a]
    assert sizes and set(sizes) <= {"2", "4096"}, sets
    assert [vm for vm in fake_tart.vms() if vm.startswith("labctl-k8s-")]

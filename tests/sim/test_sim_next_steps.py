"""After a successful install or boot labctl says what to do next, as kind does after `kind create cluster`: the
kubectl contexts, `labctl kubeconfig --merge`, a `kubectl --context labctl-<cluster> get nodes` that works, and the
stacks' URLs that `status` shows; in --json the summary event carries it as data; -q prints none of it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHIPPED
from tests.sim.test_sim_stacks import open_sim
from tests.sim.test_sim_e2e import labctl, summary_of

pytestmark = pytest.mark.sim


@pytest.fixture
def small(lab_dir, fake_tart):
    """The shipped lab's dev cluster alone (dev-master, dev-worker1 and its stacks)."""
    raw = json.loads(SHIPPED.read_text())
    raw["clusters"] = [c for c in raw["clusters"] if c["name"] == "dev"]
    with open_sim(lab_dir, fake_tart, raw) as lab:
        yield lab


def test_install_and_boot_end_with_what_to_do_next(small):
    first = labctl("install")
    assert first.code == 0, first.err + first.out[-3000:]
    text = first.out
    assert "Your lab is ready: kubectl contexts labctl-dev." in text
    assert "labctl kubeconfig --merge" in text and "kubectl --context labctl-dev get nodes" in text
    status = json.loads(labctl("--json", "status").out)
    urls = status["clusters"][0]["urls"]
    assert urls and "hubble-ui" in urls
    for name, url in urls.items():  # the same URLs status shows, each on its own line
        assert f"dev {name}: {url}" in text
    assert text.index("labctl install:") < text.index("Your lab is ready")  # after the counts, the last word

    as_json = labctl("--json", "install")
    assert as_json.code == 0
    assert summary_of(as_json.out)["next"] == [{"cluster": "dev", "context": "labctl-dev", "urls": {},
                                                "kubeconfig": str(small.config.parent / ".labctl" / "kubeconfig"
                                                                  / "dev.yaml")}]
    assert "Your lab is ready" not in as_json.out
    quiet = labctl("-q", "boot")
    assert quiet.code == 0 and "Your lab is ready" not in quiet.out + quiet.err

    assert labctl("shutdown").code == 0
    boot = labctl("boot")
    assert boot.code == 0, boot.err
    assert "kubectl --context labctl-dev get nodes" in boot.out


def test_nothing_to_point_at_before_the_control_plane_is_up(small):
    result = labctl("install", "--only", "vms")
    assert result.code == 0, result.err
    assert "Your lab is ready" not in result.out and "kubectl --context" not in result.out

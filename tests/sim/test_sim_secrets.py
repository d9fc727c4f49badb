"""No secret a simulated install handles reaches a file labctl writes or its output, even with -vv (issue 13 item 3).

The secrets: every bootstrap token the simulated clusters know (labctl's join tokens, and the one `kubeadm init`
would print), every certificate key uploaded, and the stacks' admin passwords. Only the files whose job is to hold
one are left out of the scan: credentials.json and the lab's private SSH key.
"""

from __future__ import annotations

import json
import stat

import pytest

from tests.sim.test_sim_e2e import labctl, sim  # noqa: F401  (the fixture)

pytestmark = pytest.mark.sim

HOLDERS = {"credentials.json", "id_ed25519"}


@pytest.mark.slow
def test_an_install_with_vv_writes_and_prints_no_secret(sim, tmp_path, monkeypatch):  # noqa: F811
    debug_log = tmp_path / "state" / "debug.log"
    monkeypatch.setenv("LABCTL_DEBUG_LOG", str(debug_log))
    result = labctl("-vv", "install")
    assert result.code == 0, result.err[-3000:]
    root = tmp_path / ".labctl"
    secrets = {t for c in sim.clusters.values() for t in c.tokens} | \
        {t.split(".", 1)[1] for c in sim.clusters.values() for t in c.tokens} | \
        {k for c in sim.clusters.values() for k in c.certificate_keys}
    assert secrets, "the install joined workers with bootstrap tokens"
    passwords = json.loads((root / "credentials.json").read_text())
    secrets |= {e["password"] for table in passwords.values() for e in table.values()}
    assert len(secrets) > 10
    files = [p for p in root.rglob("*") if p.is_file() and p.name not in HOLDERS] + [debug_log]
    assert debug_log.exists() and any(p.parent.name == "logs" for p in files)
    for path in files:
        text = path.read_text(errors="replace")
        assert not [s for s in secrets if s in text], path
    for output in (result.out, result.err):
        assert not [s for s in secrets if s in output]
    assert "<redacted>" in "".join(p.read_text() for p in (root / "logs").glob("*.log"))  # it was there to mask
    private = [p for p in (root / "logs").iterdir()] + [debug_log]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in private} == {p.name: 0o600 for p in private}

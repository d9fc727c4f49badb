"""Orchard in the simulated lab: the real OrchardProvider drives the fake controller (tests/sim/fake_orchard.py),
whose fake workers run the lab's VMs on the fake tart, where the simulated nodes (SimNode) find them as in a Tart
lab. `SimOrchardLab` is a SimLab whose provider is the Orchard one; everything else (nodes, transports, API
servers, world()) is SimLab's own."""

from __future__ import annotations

from pathlib import Path

from labctl.providers.orchard import OrchardProvider
from tests.sim.fake_orchard import FakeOrchard
from tests.sim.fake_tart import FakeTart
from tests.sim.sim_lab import SimLab
from tests.sim.sim_tart import WorldSync


class SimOrchardProvider(WorldSync, OrchardProvider):
    """The real OrchardProvider with the simulated world kept in step (WorldSync, as for tart)."""

    POLL = 0.02  # the fake worker is quick; the real default looks once a second

    def delete(self, node) -> bool:
        name = node if isinstance(node, str) else node.name
        try:
            return super().delete(node)
        finally:
            # the controller forgets the VM at once; its worker removes the Tart VM a moment later
            self.sim.orchard.wait_deleted(name)
            self.vm_gone(name)


class SimOrchardLab(SimLab):
    """A SimLab whose VMs come from the fake Orchard controller (`orchard`, already started, its URL in
    clusters.json). The token must be in the environment variable clusters.json names."""

    def __init__(self, config: Path, fake: FakeTart, orchard: FakeOrchard):
        super().__init__(config, fake)
        self.orchard = orchard
        self.provider = SimOrchardProvider(self.model, self.state, self)

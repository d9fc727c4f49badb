"""What the engine works with: the Phase contract every phases/ module implements, the Step (one phase on one target),
their results, the events fed to the UI, and the user's Selection. The engine (labctl/engine.py) builds the graph
and runs it; everything here is plain data and the interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .errors import LabctlError

if TYPE_CHECKING:
    from .model import Cluster, Lab, Node

Scope = Literal["node", "cluster", "lab"]
Status = Literal["unchanged", "changed", "failed", "blocked", "cancelled", "would-change", "unknown", "pending"]


@dataclass(frozen=True)
class Target:
    cluster: str | None = None
    node: str | None = None
    item: str | None = None  # one of a cluster phase's items (`Phase.items`), e.g. a stack

    def __str__(self) -> str:
        if self.item:
            return f"{self.cluster}/{self.item}"
        return self.node or self.cluster or "lab"


@dataclass(frozen=True)
class Check:
    done: bool
    detail: str = ""


class CannotCheck(LabctlError):
    """A check could not look at the world (the provider is missing, the node is not up yet...).

    In a plan the step is shown as `unknown` with this reason; during a run it is a failure.
    """


class Phase:
    """The contract every phase file implements. Subclass, set the attributes, implement check and apply."""

    name: str = ""
    scope: Scope = "node"
    after: tuple[str, ...] = ()
    description: str = ""

    def applies(self, lab: Lab, cluster: Cluster) -> bool:
        """Does this phase run on this cluster at all? (e.g. istio only where the cluster declares it)"""
        return True

    def items(self, lab: Lab, cluster: Cluster) -> list[str] | None:
        """Cluster phases: None for one step per cluster, or the names of one step each (e.g. its stacks)."""
        return None

    def item_requires(self, lab: Lab, cluster: Cluster, item: str) -> list[str]:
        """The items of the same phase and cluster that `item` waits for (e.g. the stacks it requires)."""
        return []

    def needs_nodes(self, lab: Lab, cluster: Cluster) -> list[str] | None:
        """Cluster phases: the names of the nodes whose node-phase steps (of the phases in `after`) this step waits
        for, or None for every node of the cluster. Init needs only its first control plane: the workers' package
        installs go on beside it, and each worker's `join` waits for its own node and for init."""
        return None

    def cross_cluster(self, lab: Lab, cluster: Cluster, item: str | None) -> list[tuple[str, str]]:
        """(phase, cluster) pairs in OTHER clusters this step waits for when they are selected (e.g. Argo CD on one
        cluster registering the others needs their API servers)."""
        return []

    def waves(self, cluster: Cluster) -> list[list[Node]]:
        """Node phases: groups of nodes run one group after another; nodes inside a group run in parallel."""
        return [list(cluster.nodes)]

    def blocked(self, ctx, target: Target) -> str | None:
        """Why this step cannot work in this lab whatever the VMs hold (e.g. init without a network the nodes share:
        Provider.network_problem), or None. A plan shows it as blocked with this reason before looking at anything;
        a run still fails in check, with the same reason."""
        return None

    def check(self, ctx, target: Target) -> Check:  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, ctx, target: Target) -> str | None:  # pragma: no cover - interface
        """Make check() true. Returns a short note of what changed (shown in the summary)."""
        raise NotImplementedError


@dataclass(eq=False)
class Step:
    phase: Phase
    target: Target
    deps: set[Step] = field(default_factory=set)
    # the deps this step waits for but does not need to succeed (another cluster's steps: Argo CD registers the
    # clusters that made it; one that failed must not block a stack on a healthy cluster)
    soft: set[Step] = field(default_factory=set)

    @property
    def id(self) -> str:
        where = "/".join(p for p in (self.target.cluster, self.target.node, self.target.item) if p) or "lab"
        return f"{self.phase.name}:{where}"

    def __repr__(self) -> str:
        return f"Step({self.id})"


@dataclass
class StepResult:
    step: Step
    status: Status
    detail: str = ""
    error: BaseException | None = None
    elapsed: float = 0.0

    def as_dict(self) -> dict:
        t = self.step.target
        return {
            "step": self.step.id,
            "phase": self.step.phase.name,
            "cluster": t.cluster,
            "node": t.node,
            "status": self.status,
            "detail": self.detail,
            "elapsed": round(self.elapsed, 3),
        }


@dataclass
class Event:
    """What the UI, the NDJSON output and the logs are fed with."""

    kind: Literal["plan", "start", "note", "result", "finish"]
    step: Step | None = None
    status: Status | None = None
    detail: str = ""
    elapsed: float = 0.0

    def as_dict(self) -> dict:
        out: dict = {"event": self.kind, "time": round(time.time(), 3)}
        if self.step is not None:
            t = self.step.target
            out.update(step=self.step.id, phase=self.step.phase.name, cluster=t.cluster, node=t.node)
        if self.status:
            out["status"] = self.status
        if self.detail:
            out["detail"] = self.detail
        if self.kind == "result":
            out["elapsed"] = round(self.elapsed, 3)
        return out


@dataclass
class Summary:
    results: list[StepResult]
    elapsed: float = 0.0
    interrupted: bool = False

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.status in ("unchanged", "changed") for r in self.results)

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if r.status == "failed"]


@dataclass
class Selection:
    only: list[str] = field(default_factory=list)
    start: str | None = None  # --from
    skip: list[str] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)
    # --node / --stack: only the node steps of these nodes and the item steps (stacks) of these items; cluster steps
    # without items still run unless --only leaves them out. Terraform's resources each run one such slice.
    nodes: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)

    @property
    def whole(self) -> bool:
        """Does this selection run every phase on every target of its clusters?"""
        return not (self.only or self.start or self.skip or self.nodes or self.items)

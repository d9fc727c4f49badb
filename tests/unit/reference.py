"""Readers for the chart and CRD facts in ../shared/reference (beside the checkout; see its charts/README.md).

Only parsing lives here; tests/unit/test_stack_catalogue.py decides what the facts mean for the stacks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

from tests.conftest import ROOT

REFERENCE = ROOT.parent / "shared" / "reference"
CHARTS = REFERENCE / "charts"
CRD_SCHEMAS = REFERENCE / "crd-schemas"

_URL = re.compile(r"\b(?:https?|oci)://[^\s,;()]+")


@dataclass(frozen=True)
class ChartFacts:
    """chart.txt of one chart folder."""

    folder: str
    chart: str
    version: str
    repos: tuple[str, ...]  # every Helm repository URL / OCI path the `helm repo:` line names


def _field(text: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}:[ \t]*(.*)$", text, re.M)
    return m[1].strip() if m else None


@lru_cache(maxsize=None)
def charts() -> dict[str, ChartFacts]:
    """Every chart folder's chart.txt, by folder name."""
    out = {}
    for path in sorted(CHARTS.glob("*/chart.txt")):
        text = path.read_text()
        chart, version, repo = _field(text, "chart"), _field(text, "version"), _field(text, "helm repo") or ""
        if chart and version:
            out[path.parent.name] = ChartFacts(path.parent.name, chart, version.split()[0],
                                               tuple(u.rstrip(".") for u in _URL.findall(repo)))
    return out


@lru_cache(maxsize=None)
def default_images(folder: str) -> tuple[str, ...]:
    """The images under `default images` in a chart folder's chart.txt (one `  - <ref>` line each)."""
    text = (CHARTS / folder / "chart.txt").read_text()
    section = text.split("default images", 1)[1].split("\nnotes:", 1)[0]
    return tuple(re.findall(r"^  - (\S+)$", section, re.M))


def chart_folder(chart: str) -> ChartFacts | None:
    """The folder whose chart.txt `chart:` line is `chart` (istio's `base` is in istio-base, `gateway` in
    istio-gateway, ...)."""
    found = [c for c in charts().values() if c.chart == chart]
    return found[0] if len(found) == 1 else None


def repo_matches(facts: ChartFacts, repo: str) -> bool:
    """`repo` is one of the chart's repositories: an https URL (trailing slash ignored), or an OCI registry path
    that, with the chart name appended (labctl's chart_ref), is the OCI artifact chart.txt names."""
    want = repo.rstrip("/")
    for url in facts.repos:
        url = url.rstrip("/")
        if want == url or (want.startswith("oci://") and f"{want}/{facts.chart}" == url):
            return True
    return False


# ---- workloads.txt ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    kind: str
    namespace: str  # "" for cluster-scoped objects
    name: str
    details: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.namespace, self.name

    @property
    def hook(self) -> bool:
        return "[helm hook" in self.details

    @property
    def operator_created(self) -> bool:
        """kube-prometheus-stack: objects the prometheus-operator creates, listed but not made by Helm."""
        return "not by Helm" in self.details


@dataclass
class Render:
    title: str
    release: str
    namespace: str
    command: str
    entries: list[Entry] = field(default_factory=list)


_COMMAND = re.compile(r"^## command: helm template (?P<release>\S+) \S+ -n (?P<namespace>\S+)")
_LINE = re.compile(r"^(?P<kind>[A-Z][A-Za-z]+) (?P<ref>\S+)(?: (?P<details>.*))?$")


@lru_cache(maxsize=None)
def renders(folder: str) -> tuple[Render, ...]:
    """The `helm template` renders of a chart folder's workloads.txt, each with its release, namespace and lines."""
    out: list[Render] = []
    title = ""
    for line in (CHARTS / folder / "workloads.txt").read_text().splitlines():
        if line.startswith("## render:"):
            title = line.removeprefix("## render:").strip()
        elif m := _COMMAND.match(line):
            out.append(Render(title, m["release"], m["namespace"], line.removeprefix("## command: ")))
        elif line.startswith("#") or not line.strip() or not out:
            continue
        elif m := _LINE.match(line):
            namespace, _, name = m["ref"].rpartition("/")
            out[-1].entries.append(Entry(m["kind"], namespace, name, m["details"] or ""))
    return tuple(out)


# ---- values-keys.txt ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ValueKeys:
    paths: frozenset[str]  # every listed path, without the ` {map}` marker
    maps: frozenset[str]  # paths marked ` {map}`: any sub-path is accepted

    def free_list(self, path: str) -> bool:
        """A `[]` list key whose items have no listed keys: its items are free-form."""
        return path.endswith("[]") and path in self.paths and not any(
            p.startswith(path + ".") for p in self.paths)

    def free_scalar(self, path: str) -> bool:
        """A listed key without sub-keys (its default is null or a scalar)."""
        return path in self.paths and not any(p.startswith((path + ".", path + "[]")) for p in self.paths)


@lru_cache(maxsize=None)
def value_keys(folder: str) -> ValueKeys:
    """values-keys.txt ∪ values-keys-template-only.txt of a chart folder."""
    paths, maps = set(), set()
    for name in ("values-keys.txt", "values-keys-template-only.txt"):
        file = CHARTS / folder / name
        if not file.exists():
            continue
        for line in file.read_text().splitlines():
            line = line.rstrip()
            if not line or line.startswith("#"):
                continue
            if line.endswith(" {map}"):
                line = line.removesuffix(" {map}")
                maps.add(line)
            paths.add(line)
    return ValueKeys(frozenset(paths), frozenset(maps))


def values_schema(folder: str) -> dict | None:
    path = CHARTS / folder / "values.schema.json"
    return json.loads(path.read_text()) if path.exists() else None


def crd_schema(api_version: str, kind: str) -> dict | None:
    """The JSON Schema of a custom resource (crd-schemas/<group>/<kind lower>_<version>.json), or None."""
    group, _, version = api_version.rpartition("/")
    path = CRD_SCHEMAS / group / f"{kind.lower()}_{version}.json"
    return json.loads(path.read_text()) if group and path.exists() else None

"""`labctl terraform render|check`: a Terraform root rendered from the validated lab, so `terraform plan/apply/destroy`
drive exactly the steps `labctl install` runs, with no value copied by hand (the predecessor copied clusters.json into
variables.tf, and the two drifted: /work/shared/reference/stacks.md §2).

The resources are the engine's step graph (labctl/engine.py build_steps over the install phases), coarsened:
- per node, its node steps up to the first that waits for something else (vms → kubepkgs), then the rest (join);
- per cluster step: init, cni; per stack step: `stack_<cluster>_<stack>`;
- nodeconfig, a cluster step whose work is each node's own labels and taints, as one resource per node, so that a
  new node adds resources and replaces none;
- anchors with the destroy-time provisioners: `node_<node>` (`labctl destroy --node`), destroyed after every step
  resource of that node, and `lab` (`labctl destroy`, the records), destroyed last.
Every resource is a `terraform_data` (built into Terraform ≥ 1.4: no provider to download) whose `triggers_replace`
is the spec hash of what its steps depend on, and whose local-exec runs `labctl install --only … --cluster …
[--node …|--stack …] --wait` (labctl serialises on its lab lock; --wait queues Terraform's parallel resources).
`depends_on` is the engine's order. The SSH password is a sensitive variable without a value in any file; it reaches
labctl through LABCTL_SSH_PASSWORD in the provisioner's environment (never stored in state by Terraform).
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from . import model
from .engine import Step, build_steps
from .hcl import Block, Raw, Type, document
from .lab import PASSWORD_ENV, phases_for

FILES = ("versions.tf", "variables.tf", "main.tf", "outputs.tf")
# terraform_data and its triggers_replace arrived in Terraform 1.4 (developer.hashicorp.com/terraform/language/
# resources/terraform-data)
REQUIRED_VERSION = ">= 1.4"
# cluster phases whose work is per node (each node's labels and taints): one Terraform resource per node
PER_NODE = {"nodeconfig"}
# variable names Terraform reserves (a module block's meta-arguments), and what labctl calls those fields instead
RENAMED = {"provider": "vm_provider"}
DESCRIPTIONS = {"provider": "the VM provider and its settings", "versions": "the pinned versions",
                "clusters": "the clusters, their nodes and stacks (docs/clusters-json.md)"}
HEADER = ("Rendered by `labctl terraform render` from {config}. Do not edit: change clusters.json and render again;\n"
          "`labctl terraform check` fails while this folder differs from what clusters.json renders.")


def default_dir(config: Path) -> Path:
    """The Terraform root of the lab whose clusters.json is `config`: `terraform/` beside it."""
    return config.resolve().parent / "terraform"


# ---- variables: the lab as typed values -----------------------------------------------------------------------

def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def tf_type(annotation: Any, value: Any) -> Type:
    """The Terraform type constraint of `value`, a value of the pydantic field type `annotation`. A list whose items
    have different types (a cluster's `stacks`: names and objects; clusters with different stacks) is a tuple, since
    a Terraform list needs one element type; free-form data (Helm `values`) is `any`."""
    annotation = _strip(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or len(args) == 1:
            return tf_type(args[0], value)
        for arg in args:
            base = typing.get_origin(_strip(arg)) or _strip(arg)
            if isinstance(base, type) and isinstance(value, base):
                return tf_type(arg, value)
        return Type("any")
    if origin is Literal or annotation is str:
        return Type("string")
    if annotation is bool:
        return Type("bool")
    if annotation in (int, float):
        return Type("number")
    if origin is dict:
        inner = tf_type(typing.get_args(annotation)[1], None)
        return Type("any") if inner.kind == "any" else Type("map", inner)
    if origin is list:
        item = typing.get_args(annotation)[0]
        kinds = [tf_type(item, v) for v in value or []] or [tf_type(item, None)]
        if all(k == kinds[0] for k in kinds) and "any" not in repr(kinds[0]):
            return Type("list", kinds[0])
        return Type("tuple", kinds)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return Type("object", {name: tf_type(f.annotation, getattr(value, name, None))
                               for name, f in annotation.model_fields.items()})
    return Type("any")


def variables(lab: model.Lab) -> list[Block]:
    """One variable per field of clusters.json, its default the model's value; the password has none."""
    out = []
    for name, f in model.Lab.model_fields.items():
        value = getattr(lab, name)
        if isinstance(value, SecretStr) or name == "ssh_password":
            continue
        dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else \
            [v.model_dump(mode="json") for v in value] if isinstance(value, list) else value
        out.append(Block("variable", [RENAMED.get(name, name)], [("type", tf_type(f.annotation, value)),
                                               ("description", f.description or DESCRIPTIONS[name]),
                                               ("default", dumped)]))
    out.append(Block("variable", ["ssh_password"], [
        ("type", Type("string")),
        ("description", f"First-contact SSH password, over clusters.json's; given to labctl as {PASSWORD_ENV}. "
                        "Set it with TF_VAR_ssh_password, never in a file."),
        ("sensitive", True), ("nullable", True), ("default", None),
    ]))
    return out


def model_defaults(lab: model.Lab) -> dict[str, Any]:
    """What variables.tf's defaults hold: the model dump without the password."""
    return {RENAMED.get(k, k): v for k, v in lab.model_dump(mode="json").items() if k != "ssh_password"}


# ---- resources: the step graph ------------------------------------------------------------------------------

@dataclass
class Resource:
    name: str
    cluster: str | None
    phases: list[str] = field(default_factory=list)
    node: str | None = None
    item: str | None = None
    trigger: str = ""
    deps: set[str] = field(default_factory=set)
    destroy: list[str] | None = None  # labctl arguments of the destroy-time provisioner (anchors)


def _settings(lab: model.Lab, cluster: model.Cluster) -> str:
    """What every cluster step depends on: the cluster without its nodes and stacks (their own resources carry
    those), with its effective ClusterMesh id (its position when not set)."""
    data = cluster.model_dump(mode="json", exclude={"nodes", "stacks"})
    data["cilium"]["cluster_id"] = lab.cluster_id(cluster)
    return json.dumps(data, sort_keys=True)


def resources(lab: model.Lab) -> list[Resource]:
    """The Terraform resources of the install, in the engine's order, each with its deps (resource names)."""
    steps = build_steps(lab, phases_for("install"))
    of: dict[Step, list[str]] = {}
    res: dict[str, Resource] = {"lab": Resource("lab", None, destroy=["destroy", "--yes"])}
    last_node_group: dict[str, str] = {}
    for step in steps:
        t, phase = step.target, step.phase
        if t.node:
            node = lab.cluster(t.cluster).nodes[[n.name for n in lab.cluster(t.cluster).nodes].index(t.node)]
            current = last_node_group.get(t.node)
            if current and all(d in of and of[d] == [current] for d in step.deps):
                res[current].phases.append(phase.name)
                of[step] = [current]
                continue
            name, anchor = f"{phase.name}_{t.node}", f"node_{t.node}"
            res[name] = Resource(name, t.cluster, [phase.name], t.node, trigger=model.node_hash(lab, node))
            if anchor not in res:  # the node's first group: the anchor (its VM's destroy) outlives its steps
                res[anchor] = Resource(anchor, t.cluster, node=t.node, deps={"lab"},
                                       destroy=["destroy", "--cluster", t.cluster, "--node", t.node, "--yes"])
                res[name].deps.add(anchor)
            last_node_group[t.node] = name
            of[step] = [name]
            continue
        cluster = lab.cluster(t.cluster)
        if phase.name in PER_NODE:
            names = []
            for node in cluster.nodes:
                name = f"{phase.name}_{node.name}"
                res[name] = Resource(name, t.cluster, [phase.name], trigger=model.node_hash(lab, node),
                                     deps={last_node_group[node.name]})
                names.append(name)
            of[step] = names
            continue
        if t.item:
            name = f"stack_{t.cluster}_{t.item}"
            spec = cluster.stack(t.item) if t.item in cluster.stack_names else t.item
            trigger = model.spec_hash(spec, _settings(lab, cluster), lab.versions)
        else:
            name = f"{phase.name}_{t.cluster}"
            needs = [n for n in cluster.nodes if n.name in (phase.needs_nodes(lab, cluster) or [])]
            trigger = model.spec_hash(_settings(lab, cluster), *needs, lab.versions)
        res[name] = Resource(name, t.cluster, [phase.name], item=t.item, trigger=trigger)
        of[step] = [name]
    for step, names in of.items():
        for name in names:
            res[name].deps.update(d for dep in step.deps for d in of[dep] if d != name)
    return list(res.values())


def _labctl(config: str, args: list[str]) -> str:
    return shlex.join(["labctl", "--config", config, *args])


def _resource_block(r: Resource, config: str) -> Block:
    body: list = []
    if r.trigger:
        body.append(("triggers_replace", r.trigger))
    # destroy-time provisioners may refer only to self: what they need is in `input`
    body.append(("input", {k: v for k, v in (("cluster", r.cluster), ("node", r.node), ("stack", r.item),
                                             ("config", config)) if v}))
    if r.deps:
        body.append(("depends_on", [Raw(f"terraform_data.{d}") for d in sorted(r.deps)]))
    if r.phases:
        args = ["install", "--only", ",".join(r.phases), "--cluster", r.cluster, "--wait"]
        args += ["--node", r.node] if r.node else []
        args += ["--stack", r.item] if r.item else []
        body.append(Block("provisioner", ["local-exec"], [
            ("command", _labctl(config, args)),
            ("working_dir", Raw("path.module")),
            ("environment", Raw(f'var.ssh_password == null ? {{}} : {{ {PASSWORD_ENV} = var.ssh_password }}')),
        ]))
    if r.destroy:
        body.append(Block("provisioner", ["local-exec"], [
            ("when", Raw("destroy")),
            ("command", _labctl(config, [*r.destroy, "--wait"])),
            ("working_dir", Raw("path.module")),
        ]))
    return Block("resource", ["terraform_data", r.name], body)


def _outputs(lab: model.Lab, config_path: Path, out_dir: Path) -> list[Block]:
    from .kube import kubeconfig
    from .stacks import installable, resolve
    from .state import LabState

    state = LabState(config_path.resolve().parent / ".labctl")

    def module_path(path: Path) -> Raw:
        rel = os.path.relpath(path, out_dir.resolve())
        return Raw(f'abspath("${{path.module}}/{rel}")')

    urls = {c.name: {s: resolve(lab, c, s, config_path.resolve().parent).urls for s in installable(c)}
            for c in lab.clusters}
    return [
        Block("output", ["kubeconfigs"], [
            ("description", "Each cluster's kubeconfig file (written by its init step)."),
            ("value", {c.name: module_path(kubeconfig.cluster_path(state, c.name)) for c in lab.clusters})]),
        Block("output", ["merged_kubeconfig"], [
            ("description", "One kubeconfig with a context per cluster."),
            ("value", module_path(kubeconfig.merged_path(state)))]),
        Block("output", ["contexts"], [
            ("description", "Each cluster's context name in the kubeconfigs."),
            ("value", {c.name: kubeconfig.context_name(c.name) for c in lab.clusters})]),
        Block("output", ["stack_urls"], [
            ("description", "Each stack's URLs by cluster; {address} is any of the cluster's node addresses "
                            "(`labctl status` shows them)."),
            ("value", {c: {s: u for s, u in stacks.items() if u} for c, stacks in urls.items()})]),
    ]


def render(lab: model.Lab, config: Path, out_dir: Path | None = None) -> dict[str, str]:
    """The Terraform root of `lab` (loaded from `config`) as {file name: text}, for the folder `out_dir` (default:
    default_dir(config)); paths in it are relative to that folder. Deterministic: the same lab renders the same
    bytes. Raises LabctlError when a stack cannot be rendered (as `labctl install` would)."""
    out_dir = out_dir or default_dir(config)
    rel_config = os.path.relpath(config.resolve(), out_dir.resolve())
    header = HEADER.format(config=os.path.relpath(config.resolve(), out_dir.resolve()))
    versions = Block("terraform", [], [("required_version", REQUIRED_VERSION)])
    return {
        "versions.tf": document([versions], header),
        "variables.tf": document(variables(lab), header),
        "main.tf": document([_resource_block(r, rel_config) for r in resources(lab)], header),
        "outputs.tf": document(_outputs(lab, config, out_dir), header),
    }


def write(files: dict[str, str], out_dir: Path) -> list[Path]:
    """Write the rendered files into `out_dir` (created); returns the paths that changed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in files.items():
        path = out_dir / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def diff(files: dict[str, str], out_dir: Path) -> str:
    """A unified diff from what is in `out_dir` to `files` ('' when they are the same)."""
    parts = []
    for name, text in files.items():
        path = out_dir / name
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if old != text:
            parts += difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                          f"{path} (on disk)" if path.exists() else f"{path} (missing)",
                                          f"{path} (clusters.json now)")
    return "".join(parts)


def stale(lab: model.Lab, config: Path) -> bool:
    """Is there a default_dir(config) that differs from what `lab` renders now?"""
    out_dir = default_dir(config)
    return (out_dir / "main.tf").exists() and bool(diff(render(lab, config, out_dir), out_dir))

"""runtime: containerd from the distribution, configured for kubeadm — SystemdCgroup = true and kubeadm's pause
image — plus /etc/crictl.yaml, enabled and running on the config it was given.

The check reads the EFFECTIVE config (`containerd config dump`, in the facts), not the file: imports and built-in
defaults count, and a key that is absent counts as its default. That matters because `containerd config default`
omits SystemdCgroup in 2.0.0–2.0.6 and 2.1.0–2.1.4 (containerd#12101), so the usual
`sed s/SystemdCgroup = false/true/` silently does nothing there.

The config is written as TOML, never with sed: the node's own `containerd config default` (also in the facts) is
parsed with tomlkit here, the two keys are set at the paths of its layout — `version = 2` for containerd 1.x,
`version = 3` for 2.x — creating the tables when they are missing, and the result goes to the node inside the
script (quoted), which replaces the file only when it differs and restarts containerd only then.
Checked against real binaries: the output of this edit, fed to `containerd config dump` of Debian's containerd
1.6.20, 1.7.24 and 2.1.9, reports SystemdCgroup = true and the pinned sandbox image in each layout.

When the lab declares a registry stack (registry, harbor), the CRI registry `config_path` is set to
/etc/containerd/certs.d as well — `plugins."io.containerd.grpc.v1.cri".registry` (1.x) or
`plugins."io.containerd.cri.v1.images".registry` (2.x), per containerd docs/hosts.md — so the hosts.toml files the
`registry-hosts` hook writes are read: containerd 1.7's default is empty, and then hosts.toml is ignored.
"""

from __future__ import annotations

import tomlkit

from labctl import catalog
from labctl.engine import Check, Phase, Target
from labctl.errors import CommandError, StepError
from labctl.remote import apt
from labctl.remote.base import Script
from labctl.remote.facts import (
    CONTAINERD_CONFIG,
    CONTAINERD_LAYOUTS,
    CONTAINERD_SOCKET,
    CRICTL_YAML,
    Action,
    NodeFacts,
    describe,
    parse_version,
)
from labctl.render import script
from labctl.registry_hosts import CERTS_D, lab_has_registry


CRICTL = {"runtime-endpoint": CONTAINERD_SOCKET, "image-endpoint": CONTAINERD_SOCKET, "timeout": "10"}

# Node script exit codes the phase turns into a clear error (see templates/node/runtime.sh.j2).
EXIT_TOO_OLD = 12


def sandbox_image(kubernetes: str) -> str:
    minor = int(kubernetes.split(".")[1])
    newest = max(catalog.PAUSE_VERSIONS)
    return f"registry.k8s.io/pause:{catalog.PAUSE_VERSIONS[min(minor, newest)]}"


def _version(v: tuple[int, int, int] | None) -> str:
    return ".".join(map(str, v)) if v else "?"


def actions(facts: NodeFacts, kubernetes: str, minimum: str, registry: bool = False) -> list[Action]:
    """What differs, in the order the script does it. `registry`: the lab declares a registry stack, so containerd's
    `config_path` must name CERTS_D. Raises StepError for what labctl must not fix itself."""
    want_sandbox = sandbox_image(kubernetes)
    out: list[Action] = []
    ctd = facts.containerd
    if not ctd.installed:
        # The package enables and starts it; the apply looks again after installing and does what is left.
        out += [
            Action("install", "containerd is not installed"),
            Action("config", f"then configure it: SystemdCgroup = true, sandbox {want_sandbox}"),
        ]
        if not _crictl_ok(facts):
            out.append(Action("crictl", f"write {CRICTL_YAML}"))
        out.append(Action("restart", "then start it on that config"))
        return out

    have, need = ctd.version, parse_version(minimum)
    if have is None or (need is not None and have < need):
        package = facts.packages.get("containerd")
        if package is None or not package.installed:
            # Docker's containerd.io or a hand-installed binary: replacing it is the owner's decision.
            raise StepError(
                f"containerd {_version(have)} is older than the minimum {minimum} (versions.containerd), and it "
                "is not the distribution's `containerd` package, so labctl will not replace it",
                hint="upgrade it yourself (e.g. Docker's containerd.io) or remove it so labctl installs the "
                "distribution's package",
            )
        out.append(Action("install", f"containerd {_version(have)} is older than the minimum {minimum}"))
    config = _config_problems(facts, want_sandbox, registry)
    if config:
        out.append(Action("config", config))

    if not _crictl_ok(facts):
        out.append(Action("crictl", f"{CRICTL_YAML} does not point crictl at containerd"))

    service = ctd.service
    if not service.is_enabled:
        out.append(Action("enable", f"containerd.service is {service.enabled or 'not installed'}, not enabled"))
    if not service.running:
        out.append(Action("restart", f"containerd is {service.active or 'not running'}"))
    elif facts.containerd_config_stale and not any(a.name == "config" for a in out):
        out.append(Action("restart", f"{CONTAINERD_CONFIG} changed after containerd started"))
    return out


def _crictl_ok(facts: NodeFacts) -> bool:
    crictl = facts.conf_values(CRICTL_YAML, sep=":")
    return all(crictl.get(k) == CRICTL[k] for k in ("runtime-endpoint", "image-endpoint"))


def _config_problems(facts: NodeFacts, want_sandbox: str, registry: bool = False) -> str:
    ctd = facts.containerd
    if ctd.effective is None:
        error = ctd.config_dump_error.strip().splitlines()[-1:] or ["no output"]
        return f"`containerd config dump` failed ({error[0]})"
    if facts.containerd_layout not in CONTAINERD_LAYOUTS:
        return f"config version {facts.containerd_layout} is not one labctl writes (2 or 3)"
    problems = []
    if facts.cri_disabled:
        problems.append("the CRI plugin is disabled")
    if facts.containerd_systemd_cgroup is not True:
        present = "SystemdCgroup" in (facts.containerd_runc_options or {})
        problems.append("SystemdCgroup is false" if present else "SystemdCgroup is missing (so false)")
    if facts.sandbox_image != want_sandbox:
        problems.append(f"sandbox image is {facts.sandbox_image or 'unset'} (want {want_sandbox})")
    if registry and CERTS_D not in (facts.containerd_config_path or "").split(":"):
        # explicit on 2.x too: its implicit fallback for an empty value is not in `config dump`, and 1.x has none
        problems.append(f"registry config_path is {facts.containerd_config_path or 'empty'}, so the lab registry's "
                        f"{CERTS_D}/<host>/hosts.toml is ignored (want {CERTS_D})")
    return "; ".join(problems)


CONFIG_HEADER = (
    "# Written by labctl: this node's 'containerd config default' with the runc runtime's SystemdCgroup = true\n"
    "# and kubeadm's sandbox (pause) image. labctl rewrites it when either differs; the previous file is kept\n"
    "# as config.toml.labctl.bak.\n"
)


def containerd_config(default: str, sandbox: str, registry: bool = False) -> str:
    """containerd's own default config with SystemdCgroup = true and the sandbox image set, edited as TOML; with
    `registry`, also the CRI registry `config_path` = CERTS_D (containerd docs/hosts.md, "CRI")."""
    doc = tomlkit.parse(default)
    layout = CONTAINERD_LAYOUTS.get(int(doc.get("version", 1)))
    if layout is None:
        raise StepError(
            f"containerd's default config has version = {doc.get('version', 1)}; labctl writes 2 (1.x) and 3 (2.x)",
            hint="install containerd 1.7 or newer",
        )
    _table(doc, layout.runc_options)["SystemdCgroup"] = True
    _table(doc, layout.sandbox_table)[layout.sandbox_key] = sandbox
    if registry:
        _table(doc, layout.registry_table)["config_path"] = CERTS_D
    return CONFIG_HEADER + tomlkit.dumps(doc).removeprefix(CONFIG_HEADER)


def _table(doc, keys: tuple[str, ...]):
    table = doc
    for key in keys:
        if key not in table:
            table[key] = tomlkit.table()
        table = table[key]
    return table


def crictl_yaml() -> str:
    return "\n".join(f"{k}: {v}" for k, v in CRICTL.items())


def params(facts: NodeFacts, kubernetes: str, minimum: str, pending: list[Action], registry: bool = False) -> dict:
    names = [a.name for a in pending]
    config = ""
    if "config" in names and "install" not in names:
        if not facts.containerd.config_default:
            raise StepError(
                "`containerd config default` printed nothing on the node, so there is no config to start from",
                hint="run `containerd config default` on the node and check that containerd is installed correctly",
            )
        config = containerd_config(facts.containerd.config_default, sandbox_image(kubernetes),
                                   registry).rstrip("\n")
    return {
        "actions": names,
        "minimum": minimum,
        "containerd_config": CONTAINERD_CONFIG,
        "config": config,
        "crictl_yaml": CRICTL_YAML,
        "crictl": crictl_yaml(),
        "socket": CONTAINERD_SOCKET.removeprefix("unix://"),
        **apt.params(),
    }


def todo(ctx, target: Target) -> list[Action]:
    versions = ctx.lab.versions
    return actions(ctx.facts(target.node), versions.kubernetes, versions.containerd, lab_has_registry(ctx.lab))


def render(ctx, target: Target, pending: list[Action]) -> Script:
    versions = ctx.lab.versions
    values = params(ctx.facts(target.node), versions.kubernetes, versions.containerd, pending,
                    lab_has_registry(ctx.lab))
    return script("runtime.apply", "node/runtime.sh.j2", **values)


class Runtime(Phase):
    name = "runtime"
    scope = "node"
    after = ("prepare",)
    description = "containerd with SystemdCgroup and kubeadm's pause image, crictl"

    def check(self, ctx, target: Target) -> Check:
        pending = todo(ctx, target)
        if pending:
            return Check(False, describe(pending))
        facts = ctx.facts(target.node)
        return Check(True, f"containerd {facts.containerd_version}, SystemdCgroup = true, sandbox "
                           f"{sandbox_image(ctx.lab.versions.kubernetes)}, running")

    def apply(self, ctx, target: Target) -> str | None:
        pending = todo(ctx, target)
        done: list[str] = []
        if any(a.name == "install" for a in pending):
            # Install first, then look again: the config is built from the installed containerd's own default.
            self._run(ctx, target, [Action("install", "")])
            done.append("install")
            ctx.facts(target.node, refresh=True)
            pending = [a for a in todo(ctx, target) if a.name != "install"]
        if pending:
            self._run(ctx, target, pending)
            done += [a.name for a in pending]
        return ", ".join(done) or None

    def _run(self, ctx, target: Target, pending: list[Action]) -> None:
        run = render(ctx, target, pending)
        try:
            ctx.transport(target.node).run(run, sudo=True, timeout=900)  # apt on a slow mirror takes minutes
        except CommandError as exc:
            failure = apt.failure(exc, "installing containerd")
            if failure is not None:
                raise failure from exc
            if exc.returncode == EXIT_TOO_OLD:
                raise StepError(
                    f"{target.node}: the distribution's containerd is older than versions.containerd "
                    f"{ctx.lab.versions.containerd}\n{exc.tail}",
                    hint="use a base image whose distribution ships a newer containerd (Ubuntu 24.04 has 2.2 in "
                    "noble-updates), "
                    "or lower versions.containerd in clusters.json if you accept an unsupported runtime",
                ) from exc
            raise
        finally:
            ctx.invalidate(target.node)


phase = Runtime()

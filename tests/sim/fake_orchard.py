"""A fake Orchard controller with fake workers, in-process: follows /work/shared/reference/orchard.md.

The HTTP side is the contract labctl relies on: routes under /v1, HTTP Basic with service accounts and roles (an
empty 401 for unknown credentials, a 401 `{"message"}` for a missing role), the VM resource's JSON shape and
defaults, 409/412/404 as the controller answers them, `/ip?wait=` with its 408/417, workers with `resources`.

Behind it, what the controller and its workers do (cirruslabs/orchard internal/controller/scheduler/scheduler.go and
internal/worker/vmmanager/tart/tart.go): the scheduler places the oldest unscheduled VM on a worker that is online,
not paused, of the same arch/runtime, carries the VM's labels and can fit its `resources` (busiest worker first,
the default `optimize-utilization`); a VM no worker can fit stays `pending`. The worker then runs the real tart
sequence on the fake tart (tests/sim/fake_tart.py): `clone IMAGE`, `set --memory`, `set --cpu`, `set --disk-size`,
`set --random-mac`, then `run [--net-bridged=IF] [--no-graphics]`, and the VM is `running` once `run` is launched
(the worker's SetStarted). A guest that powers itself off is `failed` ("VM exited unexpectedly"). DELETE removes the
resource at once; the worker then stops and deletes the Tart VM (`stop`, `delete`). The worker's IP resolution is
`tart ip --wait 5 --resolver agent` (bridged VMs).

Sim shortcuts (not Orchard): every fake worker runs its VMs in the one fake tart home of the simulated lab, under
the VM's own name (SimNode finds a VM by its node's name), while `localName` reports Orchard's on-disk name format;
`tart fqn` (whose failure the worker ignores) is not called. The scheduler and the workers: fake_orchard_workers.py.

Test controls: `add_worker`, `pause`, `set_offline`, `requests` (every request: method, path, status, whether it
carried credentials), `wait_deleted`, `vm`/`vms` (the stored resources).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import json
import re
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from tests.sim.fake_orchard_workers import SchedulerAndWorkers, timestamp
from tests.sim.fake_tart import FakeTart

CORES = "org.cirruslabs.logical-cores"
MEMORY = "org.cirruslabs.memory-mib"
TART_VMS = "org.cirruslabs.tart-vms"
SIMPLE_NAME = re.compile(r"^[A-Za-z0-9:_.-]*$")  # internal/simplename/simplename.go Validate
ROLES = ("compute:read", "compute:write", "compute:connect", "admin:read", "admin:write")
VERSION = "0.40.0-fake"


class Denied(Exception):
    def __init__(self, status: int, body: dict | None = None):
        self.status, self.body = status, body


class FakeOrchard(SchedulerAndWorkers):
    """The controller (HTTP on 127.0.0.1) and its workers. Use as a context manager, or start()/stop()."""

    def __init__(self, tart: FakeTart, accounts: dict[str, tuple[str, list[str]]],
                 workers: dict[str, dict[str, int]] | None = None):
        self.tart = tart
        self.accounts = dict(accounts)  # name → (token, roles)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.workers: dict[str, dict] = {}
        for name, resources in (workers or {}).items():
            self.add_worker(name, resources)
        self.vms_by_name: dict[str, dict] = {}
        self.requests: list[dict] = []
        self._runs: dict[str, subprocess.Popen] = {}
        self._deleting: set[str] = set()
        self._busy: set[str] = set()  # VMs their worker is still cloning/configuring
        self._stop = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # -- life ------------------------------------------------------------------------------------------------
    def start(self) -> FakeOrchard:
        for target in (self.server.serve_forever, self._scheduler):
            thread = threading.Thread(target=target, daemon=True, name=f"fake-orchard-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        with self.lock:
            self._stop = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeOrchard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test controls ---------------------------------------------------------------------------------------
    def add_worker(self, name: str, resources: dict[str, int], labels: dict[str, str] | None = None) -> None:
        """A Tart worker on an Apple-silicon Mac: its defaults (tart-vms 2) merged with `resources`
        (internal/worker/worker.go)."""
        with self.lock:
            self._add_worker(name, resources, labels)
            self.changed.notify_all()  # new capacity: pending VMs may fit now

    def _add_worker(self, name: str, resources: dict[str, int], labels: dict[str, str] | None) -> None:
        self.workers[name] = {"name": name, "resources": {TART_VMS: 2, **resources}, "labels": labels or {},
                              "last_seen": timestamp(), "machine_id": uuid.uuid4().hex, "scheduling_paused": False,
                              "arch": "arm64", "runtime": "tart", "createdAt": timestamp()}

    def pause(self, worker: str) -> None:
        with self.lock:
            self.workers[worker]["scheduling_paused"] = True

    def set_offline(self, worker: str) -> None:
        with self.lock:
            self.workers[worker]["last_seen"] = "2020-01-01T00:00:00Z"

    def remove_workers(self) -> None:
        with self.lock:
            self.workers.clear()

    def vm(self, name: str) -> dict | None:
        with self.lock:
            return copy.deepcopy(self.vms_by_name.get(name))

    def vms(self) -> list[str]:
        with self.lock:
            return sorted(self.vms_by_name)

    def wait_deleted(self, name: str, timeout: float = 30) -> None:
        """Until the worker has stopped and deleted the Tart VM of a deleted resource."""
        with self.lock:
            if not self.changed.wait_for(lambda: name not in self._deleting, timeout):
                raise AssertionError(f"the fake worker did not delete {name} within {timeout} s")

    # -- the API ---------------------------------------------------------------------------------------------
    def authenticate(self, header: str | None) -> str | None:
        """internal/controller/api.go authenticateMiddleware: no credentials → anonymous (None); bad → 401."""
        if not header:
            return None
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return None  # Go's BasicAuth() is false: the request goes on without an account
        try:
            user, sep, token = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        known = self.accounts.get(user)
        if known is None or not hmac.compare_digest(known[0].encode(), token.encode()):
            raise Denied(401)
        return user

    def authorize(self, account: str | None, *roles: str, any_of: bool = False) -> None:
        if account is None:
            raise Denied(401)
        have = set(self.accounts[account][1])
        if (any(r in have for r in roles) if any_of else all(r in have for r in roles)):
            return
        hint = "any of the following roles must be present" if any_of else "all of the following roles must be present"
        raise Denied(401, {"message": f"{hint}: {', '.join(roles)}"})

    def handle(self, method: str, path: str, query: dict, body: bytes, account: str | None) -> tuple[int, object]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] != ["v1"]:
            return 404, None
        parts = parts[1:]
        if parts == ["controller", "info"] and method == "GET":
            self.authorize(account)
            return 200, {"version": VERSION, "commit": "fake", "capabilities": ["rpc-v1", "vm-state-endpoint"]}
        if parts == ["workers"] and method == "GET":
            self.authorize(account, "compute:read")
            with self.lock:
                return 200, [copy.deepcopy(w) for w in sorted(self.workers.values(), key=lambda w: w["name"])]
        if parts == ["vms"] and method == "GET":
            self.authorize(account, "compute:read")
            wanted = (query.get("filter") or [""])[0]
            with self.lock:
                out = [copy.deepcopy(v) for v in sorted(self.vms_by_name.values(), key=lambda v: v["name"])]
            if wanted:
                key, _, value = wanted.partition("=")
                if key != "worker":
                    return 412, {"message": f"unsupported filter path: {key}"}
                out = [v for v in out if v.get("worker") == value]
            return 200, out
        if parts == ["vms"] and method == "POST":
            self.authorize(account, "compute:write")
            return self._create(body)
        if len(parts) == 2 and parts[0] == "vms":
            name = parts[1]
            if method == "GET":
                self.authorize(account, "compute:read")
                vm = self.vm(name)
                return (404, None) if vm is None else (200, vm)
            if method == "DELETE":
                self.authorize(account, "compute:write")
                return self._delete(name)
            if method == "PUT":
                self.authorize(account, "compute:write")
                return self._update(name, body)
        if len(parts) == 3 and parts[0] == "vms" and parts[2] == "ip" and method == "GET":
            self.authorize(account, "compute:write", "compute:connect", any_of=True)
            return self._ip(parts[1], (query.get("wait") or ["0"])[0])
        return 404, None

    def _create(self, body: bytes) -> tuple[int, object]:
        """internal/controller/api_vms.go createVM."""
        try:
            vm = json.loads(body)
            if not isinstance(vm, dict):
                raise ValueError
        except ValueError:
            return 400, {"message": "invalid JSON was provided"}
        name = vm.get("name") or ""
        if not name:
            return 412, {"message": "VM name is empty"}
        if not SIMPLE_NAME.match(name):
            return 412, {"message": "VM name name contains restricted characters, please only use [A-Za-z0-9:-_.]"}
        if not vm.get("image"):
            return 412, {"message": "VM image is empty"}
        for key, allowed in (("os", ("darwin", "linux")), ("arch", ("arm64", "amd64")), ("runtime", ("tart", "vetu"))):
            if vm.get(key) not in (None, "", *allowed):
                return 400, {"message": "invalid JSON was provided"}  # the enum's UnmarshalJSON fails the bind
        uid = str(uuid.uuid4())
        vm.update(status="pending", status_message="", createdAt=timestamp(), restart_count=0, uid=uid,
                  powerState="running", localName=f"orchard-{name}-{uid}-0", generation=0, observedGeneration=0,
                  conditions=[{"type": "scheduled", "state": "false"}])
        vm["tartName"] = vm["localName"]
        vm["os"] = vm.get("os") or "darwin"
        vm["arch"] = vm.get("arch") or "arm64"
        vm["runtime"] = vm.get("runtime") or "tart"
        vm["resources"] = dict(vm.get("resources") or {})
        if vm["os"] == "darwin" and vm["runtime"] == "tart":
            vm["resources"].setdefault(TART_VMS, 1)
        policy = vm.get("imagePullPolicy") or "IfNotPresent"
        if policy not in ("IfNotPresent", "Always"):
            return 412, {"message": f"unsupported image pull policy: {json.dumps(policy)}"}
        vm["imagePullPolicy"] = policy
        restart = vm.get("restart_policy") or "Never"
        if restart not in ("Never", "OnFailure"):
            return 412, {"message": f"unsupported restart policy: {json.dumps(restart)}"}
        vm["restart_policy"] = restart
        with self.lock:
            if name in self.vms_by_name:
                return 409, {"message": "VM with this name already exists"}
            self.vms_by_name[name] = vm
            self.changed.notify_all()  # request immediate scheduling
            return 200, copy.deepcopy(vm)

    def _update(self, name: str, body: bytes) -> tuple[int, object]:
        """internal/controller/api_vms.go updateVMSpec: only the VMSpec part (os/arch/runtime fixed, softnet,
        suspendable, powerState); cpu, memory, diskSize and image are not part of it."""
        try:
            user = json.loads(body)
            if not isinstance(user, dict):
                raise ValueError
        except ValueError:
            return 400, {"message": "invalid JSON was provided"}
        with self.lock:
            vm = self.vms_by_name.get(name)
            if vm is None:
                return 404, None
            if vm["status"] == "failed":
                return 412, {"message": "cannot update VM in a terminal state"}
            if any((user.get(k) or d) != vm[k] for k, d in (("os", "darwin"), ("arch", "arm64"), ("runtime", "tart"))):
                return 412, {"message": "\"os\", \"arch\" and \"runtime\" fields cannot be modified"}
            power = user.get("powerState", "")
            if power not in ("running", "stopped", "suspended"):
                return 412, {"message": f"invalid \"powerState\" value: {power}"}
            if vm["powerState"] != "running":
                return 412, {"message": "invalid \"powerState\" transition: cannot transition from a terminal power "
                                        "state"}
            if power == "suspended" and not vm.get("suspendable"):
                return 412, {"message": "invalid \"powerState\" transition: only suspendable VMs can be suspended"}
            spec = ("netSoftnet", "netSoftnetAllow", "netSoftnetBlock", "suspendable", "powerState")
            if all(user.get(k) == vm.get(k) for k in spec):
                return 200, copy.deepcopy(vm)
            for key in spec:
                vm[key] = user.get(key)
            vm["generation"] += 1
            return 200, copy.deepcopy(vm)

    def _delete(self, name: str) -> tuple[int, object]:
        with self.lock:
            vm = self.vms_by_name.pop(name, None)
            if vm is None:
                return 404, None
            self.changed.notify_all()  # capacity freed: pending VMs may fit now
            if vm.get("worker"):  # placed: its worker stops and deletes whatever it has made of it
                self._deleting.add(name)
                threading.Thread(target=self._worker_delete, args=(name,), daemon=True).start()
        return 200, None

    def _ip(self, name: str, wait_raw: str) -> tuple[int, object]:
        """internal/controller/api_vms_ip.go: wait up to `wait` s for status running, then ask the worker."""
        try:
            wait = int(wait_raw)
            if not 0 <= wait <= 65535:
                raise ValueError
        except ValueError:
            return 400, None
        deadline = time.monotonic() + wait
        with self.lock:
            while True:
                vm = self.vms_by_name.get(name)
                if vm is None:
                    return 404, None
                if vm["status"] == "failed":
                    return 417, {"message": f"VM is in a terminal state '{vm['status']}'"}
                if vm["status"] == "running":
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return 408, {"message": f"VM is not running on '{vm.get('worker', '')}' worker"}
                self.changed.wait(min(left, 1.0))  # the real controller looks once a second (waitForVM)
        while True:
            address = self._resolve_ip(name)
            if address:
                return 200, {"ip": address}
            if time.monotonic() >= deadline:
                return 408, {"message": "context deadline exceeded"}  # ❓ the retry loop's error on timeout


def _handler(fake: FakeOrchard):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the test reads fake.requests
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            header = self.headers.get("Authorization")
            try:
                account = fake.authenticate(header)
                status, payload = fake.handle(method, url.path, parse_qs(url.query), body, account)
            except Denied as exc:
                status, payload = exc.status, exc.body
            with fake.lock:
                fake.requests.append({"method": method, "path": url.path, "query": url.query, "status": status,
                                      "credentials": bool(header)})
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler

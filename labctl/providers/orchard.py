"""The Orchard provider: the lab's Tart VMs on the Macs ("workers") of an Orchard controller, through its REST API.

The contract is /work/shared/reference/orchard.md (from cirruslabs/orchard's api/openapi.yaml and controller source).
What shapes this provider:
- HTTP Basic with the service account's name and token; the token comes from the environment (`token_env`), is
  registered with labctl.redact before the first request, and never appears in clusters.json, logs or errors.
- An Orchard VM starts when it is created (powerState `running`) and its `powerState: stopped` is one-way: a stopped
  VM can never run again under its name. So an Orchard VM runs or is deleted: `stop` refuses, `labctl shutdown` is
  refused for the lab (labctl/lab.py), and `destroy` deletes.
- cpu, memory and diskSize are fixed at create (PUT takes only the VMSpec part): a changed size is refused with the
  way on (destroy that node, install again).
- The VMs are bridged to the workers' LAN (`net-bridged`): with Tart's shared NAT a VM's address is private to its
  worker, so neither this machine nor VMs on other workers could reach it. SSH goes straight to the address the
  controller reports, port 22.
- Each VM asks for `org.cirruslabs.logical-cores` = cpu and `org.cirruslabs.memory-mib` = memory: Orchard's scheduler
  counts only a VM's `resources`, so without them it would place any number of VMs on one Mac. `check_capacity`
  refuses an install whose new VMs cannot all fit the workers' free resources before anything is created.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import quote

import urllib3

from .. import redact
from ..errors import ProviderError
from ..state import private_opener
from .base import VM, LabVMs

SSH_PORT = 22  # bridged VMs: the guest's own sshd on the LAN (reference/orchard.md, "SSH")
CORES = "org.cirruslabs.logical-cores"  # pkg/resource/v1/resources.go
MEMORY = "org.cirruslabs.memory-mib"
OFFLINE_SECONDS = 180  # the controller's default --worker-offline-timeout (internal/command/controller/run.go)
TIMEOUT = 30.0  # seconds per request, as Orchard's own Go client (pkg/client/client.go)


def _fail(what: str, status: int, body: bytes) -> ProviderError:
    """A controller answer labctl did not expect, with its `{"message"}` when it sent one."""
    message = ""
    try:
        message = str(json.loads(body or b"{}").get("message") or "")
    except (ValueError, AttributeError):
        message = body[:200].decode(errors="replace")
    return ProviderError(f"Orchard controller: {what} answered HTTP {status}" + (f": {message}" if message else ""))


class OrchardClient:
    """The few calls labctl makes to an Orchard controller (reference/orchard.md). Thread-safe (urllib3's pool)."""

    def __init__(self, settings, base_dir: Path | None = None):
        self.settings = settings
        self.url = settings.controller_url.rstrip("/")
        self.account = settings.service_account
        token = os.environ.get(settings.token_env)
        if not token:
            raise ProviderError(
                f"the Orchard service account token is not set: labctl reads it from ${settings.token_env}",
                hint=f"export {settings.token_env}=<the token of service account {self.account!r}> (`orchard get "
                f"service-account {self.account}` shows it to an admin); it never goes into clusters.json")
        self.token = token  # kept only to notice a changed environment (a long-lived labctl, the tests)
        basic = base64.b64encode(f"{self.account}:{token}".encode()).decode()
        redact.register(token, basic)  # before any request: nothing labctl prints may carry either
        self._headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        ca = settings.ca_cert
        if ca and base_dir is not None and not Path(ca).is_absolute():
            ca = str(base_dir / ca)
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10.0, read=TIMEOUT), retries=False, maxsize=16,  # parallel steps
            **({"ca_certs": ca} if ca else {}))

    def call(self, method: str, path: str, body: dict | None = None, *, ok: tuple[int, ...] = (200,),
             read: float = TIMEOUT) -> tuple[int, object]:
        """`method` /v1`path`; returns (status, parsed JSON or None) for a status in `ok` or 404. Raises
        ProviderError: unreachable, refused credentials (401) or role (401 with a message), anything else."""
        what = f"{method} /v1{path.split('?')[0]}"
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            resp = self._http.request(method, f"{self.url}/v1{path}", body=data, headers=headers,
                                      timeout=urllib3.Timeout(connect=10.0, read=read))
        except urllib3.exceptions.SSLError as exc:
            raise ProviderError(f"cannot verify the Orchard controller's certificate at {self.url}: {exc.reason}",
                                hint="set provider.orchard.ca_cert to the controller's certificate (PEM)") from None
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ProviderError(f"cannot reach the Orchard controller at {self.url}: {reason}",
                                hint="check provider.orchard.controller_url and that `orchard controller run` "
                                "listens there (default port 6120)") from None
        if resp.status == 401:
            raise self._refused(resp.data)
        if resp.status not in ok and resp.status != 404:
            raise _fail(what, resp.status, resp.data)
        try:
            return resp.status, (json.loads(resp.data) if resp.data else None)
        except ValueError:
            raise ProviderError(f"Orchard controller: {what} answered something that is not JSON: "
                                f"{resp.data[:200]!r}") from None

    def _refused(self, body: bytes) -> ProviderError:
        # An empty 401: unknown account or wrong token; a 401 with a message: the account lacks a role
        # (internal/controller/api.go authenticateMiddleware / authorizeBase).
        try:
            message = json.loads(body).get("message") if body else None
        except (ValueError, AttributeError):
            message = None
        if message:
            return ProviderError(f"the Orchard controller refused service account {self.account!r}: {message}",
                                 hint=f"an admin grants them: `orchard create service-account {self.account} --roles "
                                 "compute:read --roles compute:write` (or update the account)")
        return ProviderError(f"the Orchard controller at {self.url} refused service account {self.account!r}: "
                             f"unknown account or wrong token (${self.settings.token_env})",
                             hint=f"check provider.orchard.service_account and the token in ${self.settings.token_env}")


def _resources(node) -> dict[str, int]:
    return {CORES: int(node.cpu), MEMORY: int(node.memory)}


def _state(vm: dict) -> str:
    """The Provider's VMState: `running` only when the worker runs it; a pending (not yet placed or booted) or
    failed VM is not running. `stopped`/`suspended` power states are what they say (one-way, see the module)."""
    power = vm.get("powerState") or "running"
    if power in ("stopped", "suspended"):
        return power
    return "running" if vm.get("status") == "running" else "stopped"


def _vm(data: dict) -> VM:
    return VM(data["name"], _state(data),  # type: ignore[arg-type]
              cpu=int(data.get("assignedCPU") or data.get("cpu") or 0) or None,
              memory=int(data.get("assignedMemory") or data.get("memory") or 0) or None,
              disk=int(data.get("diskSize") or 0) or None)


def capacity_problem(workers: list[dict], vms: list[dict], wanted: dict[str, dict[str, int]],
                     labels: dict[str, str], now: float | None = None) -> str | None:
    """Why the VMs `wanted` (name → resources) cannot all be placed on `workers`, or None when they fit.

    Free resources per worker = its `resources` minus those of the VMs scheduled on it (the scheduler's own sum,
    internal/controller/scheduler/scheduler.go ProcessVMs); only online, unpaused arm64 Tart workers that carry
    `labels` count. Placement is first-fit, biggest VM first: a necessary check, not the scheduler's exact order
    (its profile may place differently), so a fit here can still leave a VM pending; a misfit here cannot be
    placed by any order."""
    now = time.time() if now is None else now
    free: dict[str, dict[str, int]] = {}
    for w in workers:
        if w.get("scheduling_paused") or (w.get("arch") or "arm64") != "arm64" or (w.get("runtime") or "tart") != "tart":
            continue
        if not all((w.get("labels") or {}).get(k) == v for k, v in labels.items()):
            continue
        seen = _epoch(w.get("last_seen"))
        if seen is not None and now - seen > OFFLINE_SECONDS:
            continue
        free[w["name"]] = dict(w.get("resources") or {})
    for vm in vms:
        if vm.get("worker") in free:
            for key, amount in (vm.get("resources") or {}).items():
                free[vm["worker"]][key] = free[vm["worker"]].get(key, 0) - int(amount)
    if not free:
        return "no worker is online, unpaused and carries the labels " + (json.dumps(labels) if labels else "(none)")
    for name, need in sorted(wanted.items(), key=lambda kv: (-kv[1].get(MEMORY, 0), -kv[1].get(CORES, 0), kv[0])):
        home = next((w for w, have in free.items() if all(have.get(k, 0) >= n for k, n in need.items())), None)
        if home is None:
            most = {k: max(have.get(k, 0) for have in free.values()) for k in need}
            return (f"VM {name} needs {need.get(CORES)} cores and {need.get(MEMORY)} MiB, but the most any worker "
                    f"has left is {most.get(CORES)} cores and {most.get(MEMORY)} MiB (after the VMs placed before it)")
        for key, amount in need.items():
            free[home][key] -= amount
    return None


def _epoch(value) -> float | None:
    """RFC 3339 time (Go's time.Time JSON) → epoch seconds; None when absent or unreadable."""
    if not value or not isinstance(value, str) or value.startswith("0001-"):
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def cannot_stop(name: str | None = None) -> ProviderError:
    who = f"{name}: " if name else ""
    return ProviderError(
        f"{who}Orchard VMs cannot be stopped and started again (a stopped Orchard VM never runs again; "
        "reference/orchard.md, \"Power\"), so labctl does not power them off",
        hint="an Orchard lab runs until `labctl destroy` deletes its VMs; to change a VM's cpu/memory/disk, destroy "
        "that node (`labctl destroy --node NAME`) and install again")


class OrchardProvider(LabVMs):
    name = "orchard"
    hard_stops: frozenset[str] = frozenset()
    POLL = 1.0  # seconds between looks while a new VM is placed, pulled and booted by its worker

    def __init__(self, lab, state=None, client: OrchardClient | None = None):
        super().__init__(lab)
        self.state = state
        self.settings = lab.provider.orchard
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> OrchardClient:
        with self._lock:  # made on first use: validate/plan never need the token
            if self._client is None or self._client.token != os.environ.get(self.settings.token_env):
                base = self.state.root.parent if self.state is not None else None
                self._client = OrchardClient(self.settings, base)
            return self._client

    @property
    def ip_wait_seconds(self) -> int:
        return self.settings.ip_wait_seconds

    # -- reading -------------------------------------------------------------------------------------------
    def available(self) -> str:
        """`orchard controller <version>`; checks the address and the credentials (controller/info needs a valid
        account and no role). Raises ProviderError otherwise."""
        _, info = self.client.call("GET", "/controller/info")
        return f"orchard controller {(info or {}).get('version', '?')} at {self.settings.controller_url}"

    def list(self) -> dict[str, VM]:
        _, vms = self.client.call("GET", "/vms")
        return {v["name"]: _vm(v) for v in vms or []}

    def raw(self, name: str) -> dict | None:
        status, data = self.client.call("GET", f"/vms/{quote(name, safe='')}")
        return None if status == 404 else data  # type: ignore[return-value]

    def get(self, name: str) -> VM | None:
        data = self.raw(name)
        return None if data is None else _vm(data)

    def image_cached(self, image: str) -> bool:
        return True  # the worker pulls it (imagePullPolicy IfNotPresent) when it clones the VM

    def pull(self, image: str) -> None:
        return None

    def log_path(self, node) -> Path:
        """What labctl learned about the VM from the controller (its status messages while it came up)."""
        name = node if isinstance(node, str) else node.name
        if self.state is not None:
            self.state.ensure()
            path = self.state.root / "logs"
            path.mkdir(parents=True, exist_ok=True)
            return path / f"{name}.orchard.log"
        return Path(f"{name}.orchard.log")

    def ip(self, node, wait: int = 0, *, running: bool = False) -> str | None:
        name = node if isinstance(node, str) else node.name
        if not running:
            vm = self.get(name)
            if vm is None or not vm.running:
                return None
        status, data = self.client.call("GET", f"/vms/{quote(name, safe='')}/ip?wait={int(wait)}",
                                        ok=(200, 408, 417), read=TIMEOUT + wait)
        if status != 200:  # 404 gone, 408 not running within `wait`, 417 failed
            return None
        return str((data or {}).get("ip") or "") or None

    def ssh_address(self, node, address: str | None = None) -> tuple[str, int]:
        address = address or self.ip(node, wait=self.settings.ip_wait_seconds)
        if address is None:
            raise ProviderError(f"{node.name}: the Orchard controller reports no address (is the VM running?)",
                                hint="`labctl status` shows the VMs; `labctl install` recreates a failed one after "
                                "`labctl destroy --node`")
        return address, SSH_PORT

    # -- changing ------------------------------------------------------------------------------------------
    def spec(self, node) -> dict:
        """The VM resource labctl asks the controller for (reference/orchard.md, "VM resource")."""
        s = self.settings
        return {"name": node.name, "image": self.lab.base_image, "os": "linux", "arch": "arm64", "runtime": "tart",
                "cpu": int(node.cpu), "memory": int(node.memory), "diskSize": int(node.disk), "headless": True,
                "net-bridged": s.bridge_interface, "restart_policy": "Never", "resources": _resources(node),
                **({"labels": dict(s.labels)} if s.labels else {})}

    def create(self, node) -> bool:
        self._owned(node)
        status, _ = self.client.call("POST", "/vms", self.spec(node), ok=(200, 409))
        return status == 200  # 409: a VM of that name exists (someone else's, or made in the meantime)

    def configure(self, node) -> list[str]:
        name = self._owned(node)
        vm = self._require(name, "configure")
        wrong = [f"{label} {have} → {want}{unit}" for label, have, want, unit in
                 (("cpu", vm.cpu, node.cpu, ""), ("memory", vm.memory, node.memory, " MiB"),
                  ("disk", vm.disk, node.disk, " GB")) if have != want]
        if wrong:  # PUT /v1/vms/{name} takes only the VMSpec: sizes are fixed at create
            raise ProviderError(f"{name}: Orchard cannot resize an existing VM ({', '.join(wrong)})",
                                hint=f"`labctl destroy --node {name}` and install again (its data is lost), or put "
                                "the old size back in clusters.json")
        return []

    def start(self, node) -> bool:
        """An Orchard VM starts by itself once a worker has it: wait for status `running` (placing, pulling and
        cloning included), up to start_wait_seconds. Raises ProviderError for a failed, stopped or unplaced VM."""
        name = self._owned(node)
        data = self.raw(name)
        if data is None:
            raise ProviderError(f"{name}: cannot start: the VM does not exist", hint="`labctl install` creates it")
        if data.get("status") == "running" and _state(data) == "running":
            return False
        deadline = time.monotonic() + self.settings.start_wait_seconds
        last = None
        while True:
            if data.get("powerState") in ("stopped", "suspended"):  # someone stopped it: it never runs again
                raise ProviderError(f"{name}: the Orchard VM is {data['powerState']} and Orchard never runs a "
                                    "stopped VM again", hint=f"`labctl destroy --node {name}` and install again")
            if data.get("status") == "failed":
                raise ProviderError(f"{name}: the Orchard worker {data.get('worker') or '?'} failed the VM: "
                                    f"{data.get('status_message') or 'no message'}",
                                    hint=f"`labctl destroy --node {name}` and install again; see {self.log_path(node)}"
                                    " and `orchard logs vm " + name + "`")
            if data.get("status") == "running":
                return True
            line = f"{data.get('status')} on {data.get('worker') or 'no worker yet'}: {data.get('status_message', '')}"
            if line != last:
                self._log(node, line)
                last = line
            if time.monotonic() > deadline:
                where = (f"worker {data['worker']}" if data.get("worker") else
                         "no worker (none has room for it, or none carries its labels)")
                raise ProviderError(f"{name}: not running {self.settings.start_wait_seconds} s after it was created; "
                                    f"it is {data.get('status')} on {where}",
                                    hint="`labctl doctor` checks the workers' capacity; raise "
                                    "provider.orchard.start_wait_seconds for a slow image pull")
            time.sleep(self.POLL)
            data = self.raw(name)
            if data is None:
                raise ProviderError(f"{name}: the VM was deleted while it was starting")

    def stop(self, node, timeout: float = 60, *, guest_poweroff: bool = False) -> str:
        raise cannot_stop(node if isinstance(node, str) else node.name)

    def delete(self, node) -> bool:
        """DELETE the VM resource; its worker then stops and deletes the Tart VM. True when there was one."""
        name = self._owned(node)
        status, _ = self.client.call("DELETE", f"/vms/{quote(name, safe='')}")
        return status == 200

    def _log(self, node, line: str) -> None:
        with open(self.log_path(node), "a", opener=private_opener) as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {redact.redact(line)}\n")

    # -- capacity ------------------------------------------------------------------------------------------
    def capacity_problem(self, nodes) -> str | None:
        """Why the lab's VMs that do not exist yet (of `nodes`) cannot all be placed on the workers; None: they fit.
        Reads GET /v1/workers and GET /v1/vms (needs compute:read)."""
        _, vms = self.client.call("GET", "/vms")
        existing = {v["name"] for v in vms or []}
        wanted = {n.name: _resources(n) for n in nodes if n.name not in existing}
        if not wanted:
            return None
        _, workers = self.client.call("GET", "/workers")
        return capacity_problem(workers or [], vms or [], wanted, self.settings.labels)


def check_capacity(provider: OrchardProvider, nodes) -> None:
    """Refuse, before anything is created, an install whose new VMs the workers cannot hold (ProviderError)."""
    problem = provider.capacity_problem(nodes)
    if problem:
        raise ProviderError(f"the Orchard workers have no room for this lab: {problem}",
                            hint="lower cpu/memory of some nodes, free or add workers (`orchard list workers`), or "
                            "install one cluster at a time with --cluster")


def doctor_findings(lab, config: Path) -> list:
    """`labctl doctor` for an Orchard lab: the controller answers at its URL and accepts the service account
    (GET /v1/controller/info), and its workers have room for the lab's VMs that do not exist yet."""
    from ..context import lab_dir
    from ..doctor import Finding
    from ..state import LabState

    provider = OrchardProvider(lab, state=LabState(lab_dir(config) / ".labctl"))
    try:
        found = Finding("orchard controller", "ok", f"{provider.available()}, signed in as "
                        f"{provider.settings.service_account!r}")
    except ProviderError as exc:
        return [Finding("orchard controller", "fail", exc.message, exc.hint or "")]
    except Exception as exc:  # noqa: BLE001 - doctor explains, it never crashes (an odd answer, a bad CA file)
        return [Finding("orchard controller", "warn", f"could not check: {type(exc).__name__}: {exc}",
                        "see `labctl -vv doctor`")]
    try:
        nodes = [n for _, n in lab.nodes if not n.static]  # static machines are not the workers' to hold
        problem = provider.capacity_problem(nodes)
    except ProviderError as exc:
        return [found, Finding("orchard capacity", "fail", exc.message, exc.hint or "")]
    except Exception as exc:  # noqa: BLE001 - as above
        return [found, Finding("orchard capacity", "warn", f"could not check: {type(exc).__name__}: {exc}",
                               "see `labctl -vv doctor`")]
    if problem:
        return [found, Finding("orchard capacity", "fail", f"the workers have no room for this lab: {problem}",
                               "lower cpu/memory of some nodes, or free or add workers (`orchard list workers`)")]
    cores, memory = sum(n.cpu for n in nodes), sum(n.memory for n in nodes)
    return [found, Finding("orchard capacity", "ok", f"the workers have room for the lab's VMs ({len(nodes)} VMs, "
                           f"{cores} cores, {memory} MiB in all; those that exist already hold theirs)")]

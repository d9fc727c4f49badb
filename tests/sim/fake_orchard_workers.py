"""The fake Orchard controller's scheduler and its fake workers (tests/sim/fake_orchard.py has the controller's
state and HTTP API; its module docstring says what of Orchard this follows): cirruslabs/orchard
internal/controller/scheduler/scheduler.go places VMs, internal/worker/vmmanager/tart/tart.go runs the tart
sequence on the fake tart, internal/worker/worker.go deleteVM stops and deletes a VM.
"""

from __future__ import annotations

import copy
import os
import subprocess
import threading
from datetime import datetime, timezone


def timestamp() -> str:
    """Now, as the controller writes times in its JSON (RFC 3339, UTC, "Z")."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class SchedulerAndWorkers:
    """Mixed into FakeOrchard, whose state it works on under `lock` (an RLock; `changed` its Condition, notified on
    every change): `workers`, `vms_by_name`, `tart`, and the workers' own bookkeeping `_runs` (name → its `tart run`
    process), `_deleting` (resources deleted whose Tart VM the worker is still removing), `_busy` (VMs still being
    cloned/configured), `_stop`."""

    def _online(self, worker: dict) -> bool:
        return worker["last_seen"] > "2021"  # set_offline dates it back beyond the 3-minute timeout

    def _scheduler(self) -> None:
        while True:
            with self.lock:
                placed = self._schedule_once()
                if not placed:
                    self.changed.wait()
                if self._stop:
                    return

    def _schedule_once(self) -> list[str]:
        used: dict[str, dict[str, int]] = {w: {} for w in self.workers}
        running: dict[str, int] = {w: 0 for w in self.workers}
        for vm in self.vms_by_name.values():
            if vm.get("worker") in used:
                running[vm["worker"]] += 1
                for key, amount in vm.get("resources", {}).items():
                    used[vm["worker"]][key] = used[vm["worker"]].get(key, 0) + amount
        placed = []
        for vm in sorted((v for v in self.vms_by_name.values() if not v.get("worker")), key=lambda v: v["createdAt"]):
            if vm["status"] == "failed" or vm["powerState"] != "running":
                continue
            for worker in sorted(self.workers.values(), key=lambda w: -running[w["name"]]):  # busiest first
                free = {k: v - used[worker["name"]].get(k, 0) for k, v in worker["resources"].items()}
                if (not self._online(worker) or worker["scheduling_paused"] or worker["arch"] != vm["arch"]
                        or worker["runtime"] != vm["runtime"]
                        or any(worker["labels"].get(k) != v for k, v in (vm.get("labels") or {}).items())
                        or any(amount > free.get(k, 0) for k, amount in vm.get("resources", {}).items())):
                    continue
                vm["worker"] = worker["name"]
                vm["scheduled_at"] = timestamp()
                vm["assignedCPU"] = vm.get("cpu") or 4
                vm["assignedMemory"] = vm.get("memory") or 8192
                vm["conditions"] = [{"type": "scheduled", "state": "true"}]
                running[worker["name"]] += 1
                for key, amount in vm.get("resources", {}).items():
                    used[worker["name"]][key] = used[worker["name"]].get(key, 0) + amount
                placed.append(vm["name"])
                thread = threading.Thread(target=self._worker_create, args=(vm["name"], vm["uid"]), daemon=True)
                thread.start()
                break
        return placed

    def _run_tart(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.tart.exe), *args], capture_output=True, text=True,
                              env={**os.environ, **self.tart.env(), "CI": "1"}, timeout=120)

    def _current(self, name: str, uid: str) -> dict | None:
        vm = self.vms_by_name.get(name)
        return vm if vm is not None and vm["uid"] == uid else None

    def _set(self, name: str, uid: str, **fields) -> bool:
        with self.lock:
            vm = self._current(name, uid)
            if vm is None:
                return False
            vm.update(fields)
            self.changed.notify_all()
            return True

    def _worker_create(self, name: str, uid: str) -> None:
        """internal/worker/vmmanager/tart/tart.go: cloneAndConfigure, then run."""
        with self.lock:
            # sim shortcut: the same Tart name as a deleted VM still being removed (Orchard's differ by uid)
            self.changed.wait_for(lambda: name not in self._deleting)
            vm = copy.deepcopy(self._current(name, uid))
            if vm is None:
                return
            self._busy.add(name)
        try:
            proc = self._clone_and_run(name, uid, vm)
        finally:
            with self.lock:
                self._busy.discard(name)
                self.changed.notify_all()
        if proc is None:
            return
        proc.wait()
        with self.lock:
            if self._runs.get(name) is proc:
                del self._runs[name]
            if name not in self._deleting:  # not stopped by the worker: the guest went away by itself
                self._set(name, uid, status="failed", status_message="VM exited unexpectedly")

    def _clone_and_run(self, name: str, uid: str, vm: dict) -> subprocess.Popen | None:
        steps = [("cloning VM...", ["clone", vm["image"], name])]
        steps.append(("configuring VM...", ["set", "--memory", str(vm["assignedMemory"]), name]))
        steps.append(("configuring VM...", ["set", "--cpu", str(vm["assignedCPU"]), name]))
        if vm.get("diskSize"):
            steps.append(("configuring VM...", ["set", "--disk-size", str(vm["diskSize"]), name]))
        steps.append(("configuring VM...", ["set", "--random-mac", name]))
        for message, argv in steps:
            if not self._set(name, uid, status_message=message):
                return None  # deleted meanwhile
            done = self._run_tart(*argv)
            if done.returncode != 0:
                self._set(name, uid, status="failed",
                          status_message=f"failed to clone the VM: tart {argv[0]} failed: {done.stderr.strip()}")
                return None
        run = ["run"]
        if vm.get("net-bridged"):
            run.append(f"--net-bridged={vm['net-bridged']}")
        if vm.get("headless"):
            run.append("--no-graphics")
        with self.lock:
            if self._current(name, uid) is None:
                return None
            proc = subprocess.Popen([str(self.tart.exe), *run, name], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, **self.tart.env(), "CI": "1"})
            self._runs[name] = proc
            vm = self._current(name, uid)
            vm.update(status="running", status_message="VM started", started_at=timestamp(),
                      conditions=[{"type": "scheduled", "state": "true"}, {"type": "running", "state": "true"}])
            self.changed.notify_all()
        return proc

    def _worker_delete(self, name: str) -> None:
        """internal/worker/worker.go deleteVM: stop the VM, then delete it (once the worker is done cloning)."""
        try:
            with self.lock:
                self.changed.wait_for(lambda: name not in self._busy)
            self._run_tart("stop", name, "--timeout", "30")
            with self.lock:
                proc = self._runs.get(name)
            if proc is not None:
                proc.wait(60)
            self._run_tart("delete", name)
        finally:
            with self.lock:
                self._deleting.discard(name)
                self.changed.notify_all()

    def _resolve_ip(self, name: str) -> str | None:
        done = self._run_tart("ip", "--wait", "5", "--resolver", "agent", name)
        return done.stdout.strip() if done.returncode == 0 else None

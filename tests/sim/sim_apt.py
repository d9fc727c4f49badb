"""apt on a simulated node: its locks held by unattended-upgrades for a while (a fresh Ubuntu VM's first minutes),
and a repository apt cannot use for a reason that is not the network.

`AptWorld` is a node's apt as the runtime and kubepkgs scripts meet it. Time is the simulation's: a lock "held for
90 s" is either within the script's deadline (`apt_lock_timeout`, the script waits and goes on) or past it (the
script names the lock and its holder, exit `exit_apt_locked`) — nothing sleeps. A script that does not wait for the
locks (no `apt_lock_timeout` parameter) fails as apt-get does on the lists lock: at once, exit 100, with apt's
message (apt-pkg/contrib/fileutl.cc GetLock). `DPkg::Lock::Timeout` does not cover that lock (apt.conf(5)).
"""

from __future__ import annotations

from dataclasses import dataclass

LISTS_LOCK = "/var/lib/apt/lists/lock"
UNATTENDED = "/usr/bin/python3 /usr/bin/unattended-upgrade"
MARKER = "labctl-apt:"


@dataclass
class AptWorld:
    lock_held_for: float = 0.0  # seconds unattended-upgrades still holds apt's locks (0: free)
    holder_pid: int = 812
    # apt-get update's output when it reads the pkgs.k8s.io repository and refuses it (e.g. a signature it cannot
    # verify); None: it reads it
    kubernetes_repo_error: str | None = None

    def wait(self, p: dict) -> tuple[int, str] | None:
        """The script's first apt step meets the locks: None when it may go on (after waiting, the locks are then
        free), else its (exit code, output)."""
        if self.lock_held_for <= 0:
            return None
        holder = f"{self.holder_pid} {UNATTENDED} "
        if "apt_lock_timeout" not in p:
            return 100, (f"E: Could not get lock {LISTS_LOCK}. It is held by process {self.holder_pid} "
                         f"(unattended-upgr)\nE: Unable to lock directory /var/lib/apt/lists/")
        waiting = f"waiting for {LISTS_LOCK}, held by process {holder}"
        if self.lock_held_for > p["apt_lock_timeout"]:
            return p["exit_apt_locked"], f"{waiting}\n{MARKER} locked {LISTS_LOCK} {holder}"
        self.lock_held_for = 0.0  # it finished while the script waited
        return None

    def read_kubernetes_repo(self, p: dict) -> tuple[int, str] | None:
        """apt-get update of the pkgs.k8s.io source: None when apt reads it, else the script's (exit code, output)."""
        if self.kubernetes_repo_error is None:
            return None
        if "exit_apt_failed" not in p:  # a script that takes every update failure for an unreachable host
            return 10, (f"{self.kubernetes_repo_error}\ncannot reach pkgs.k8s.io: apt-get update could not read "
                        "the Kubernetes repository")
        return p["exit_apt_failed"], (f"{self.kubernetes_repo_error}\n{MARKER} failed apt-get update of "
                                      "the Kubernetes repository (exit 100)")

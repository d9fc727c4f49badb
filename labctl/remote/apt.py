"""apt on a node: the lock wait every apt-using node script includes (templates/node/apt.inc.j2), and the one place
that turns the failure of an apt step into an error naming its cause and the next step.

A fresh Ubuntu VM runs apt by itself in its first minutes (apt-daily, unattended-upgrades), holding apt's and
dpkg's locks. apt's own `DPkg::Lock::Timeout` makes apt-get wait for the dpkg locks only (/var/lib/dpkg/lock and
lock-frontend; apt 1.9.11+), not for the lists lock `apt-get update` takes nor for `apt-mark`, which fail at once
("Could not get lock /var/lib/apt/lists/lock. It is held by process N (unattended-upgr)"). So the scripts wait for
every lock in APT_LOCKS themselves, up to APT_LOCK_TIMEOUT, before each apt step (and again when another process
took a lock in between). Past the deadline they print a `labctl-apt: locked LOCK PID COMMAND` line and exit
EXIT_APT_LOCKED; any other failing apt step prints `labctl-apt: failed STEP (exit N)` and exits EXIT_APT_FAILED,
after apt's own output, which `failure()` reads to tell an unreachable host from every other apt error.
"""

from __future__ import annotations

import re

from ..errors import CommandError, StepError

# The locks apt and dpkg take (apt's apt-pkg/init.cc and dpkg's lib/dpkg/dbmodstatdb.c; apt-get(8) FILES).
APT_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock",
             "/var/cache/apt/archives/lock")
APT_LOCK_TIMEOUT = 600  # seconds one script waits in all for the locks; unattended-upgrades can take minutes
EXIT_APT_LOCKED = 13
EXIT_APT_FAILED = 14
MARKER = "labctl-apt:"

# apt's messages for a host it could not reach (apt's methods: connect.cc, basehttp.cc).
_NETWORK = re.compile(r"Could not resolve|Temporary failure resolving|Could not connect to|Failed to connect|"
                      r"Connection timed out|Connection failed|Network is unreachable|No route to host|"
                      r"Connection refused|Unable to connect to|Cannot initiate the connection")
_HOST = re.compile(r"Could not resolve '([^']+)'|Temporary failure resolving '([^']+)'|https?://([^/\s:']+)")
# Everything else worth its own next step: (pattern, what it is, what to do).
_OTHER = (
    (re.compile(r"NO_PUBKEY|EXPKEYSIG|is not signed|signatures couldn't be verified|signatures were invalid|"
                r"BADSIG|KEYEXPIRED"),
     "a repository's signature does not verify against its key",
     "the apt source's signed-by keyring is missing, expired or wrong; for pkgs.k8s.io delete "
     "/etc/apt/keyrings/kubernetes-apt-keyring.gpg on the node and run the command again (labctl fetches it anew)"),
    (re.compile(r"Version '[^']*' for '[^']*' was not found|Unable to locate package|has no installation candidate|"
                r"is not available, but is referred to"),
     "a package or version is not in the node's repositories",
     "check versions.kubernetes / versions.containerd in clusters.json against what the repositories have "
     "(`apt-cache madison PACKAGE` on the node)"),
    (re.compile(r"dpkg was interrupted|dpkg --configure -a"),
     "an earlier dpkg run was interrupted",
     "run `sudo dpkg --configure -a` on the node, then run the command again"),
    (re.compile(r"No space left on device|You don't have enough free space"),
     "the node's disk is full",
     "free space on the node (or give the VM a larger disk) and run the command again"),
)


def params() -> dict:
    """The parameters apt.inc.j2 needs, for the phases whose scripts include it."""
    return {"apt_locks": list(APT_LOCKS), "apt_lock_timeout": APT_LOCK_TIMEOUT,
            "exit_apt_locked": EXIT_APT_LOCKED, "exit_apt_failed": EXIT_APT_FAILED, "marker": MARKER}


def failure(exc: CommandError, what: str) -> StepError | None:
    """The StepError for a node script that failed in an apt step (exit EXIT_APT_LOCKED or EXIT_APT_FAILED), naming
    the node, `what` it was doing, the cause (a held lock and its holder, an unreachable host, a bad signature, a
    missing package or version, an interrupted dpkg, a full disk, or apt's own error) and what to do, with the
    output's tail. None for any other exit: that failure is not apt's."""
    if exc.returncode not in (EXIT_APT_LOCKED, EXIT_APT_FAILED):
        return None
    node, tail = exc.node, exc.tail
    lines = tail.splitlines()
    marker = next((ln for ln in reversed(lines) if ln.startswith(MARKER)), "")
    output = "\n".join(ln for ln in lines if not ln.startswith(MARKER))
    shown = "\n".join("    " + ln for ln in output.splitlines()[-12:])
    if exc.returncode == EXIT_APT_LOCKED:
        words = marker.removeprefix(MARKER).split(None, 3)  # "locked", LOCK, PID, COMMAND
        lock, pid, command = (words + ["?", "?", "?", "?"])[1:4]
        return StepError(
            f"{node}: {what}: apt is busy — {lock} has been held by process {pid} ({command.strip()}) for more than "
            f"{APT_LOCK_TIMEOUT} s\n{shown}",
            hint="a fresh VM runs apt by itself for its first minutes (unattended-upgrades, apt-daily): wait until "
            f"it finishes (`ps -p {pid}` on the node) and run the command again",
        )
    if _NETWORK.search(output):
        hosts = sorted({next(g for g in m.groups() if g) for m in _HOST.finditer(output)}) or ["its repositories"]
        return StepError(
            f"{node}: {what}: cannot reach {', '.join(hosts)}\n{shown}",
            hint=f"the node needs outbound HTTPS to {', '.join(hosts)} (check its network and DNS: "
            f"`curl -I https://{hosts[0]}` on the node)",
        )
    for pattern, cause, next_step in _OTHER:
        if pattern.search(output):
            return StepError(f"{node}: {what}: {cause}\n{shown}", hint=next_step)
    step = marker.removeprefix(MARKER).strip().removeprefix("failed ").strip() or "an apt step"
    return StepError(f"{node}: {what}: {step} failed\n{shown}",
                     hint="read apt's error above; run the same apt command on the node to see all of it")

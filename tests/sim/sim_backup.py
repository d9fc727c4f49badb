"""The node side of the backup stack's scripts (`BackupScripts`, a mixin of SimNode): etcd snapshots, their timer,
and the restore of a control plane (labctl/backup.py, templates/backup/).

What the scripts touch is kept where it lives on a real node, so a new clone of the base image has none of it:
the files labctl `put` and the snapshots in `files`; `systemctl enable` as the timers.target.wants link it makes;
containerd's images under /var/lib/containerd. The cluster's etcd is its SimCluster's store:
- a snapshot is a copy of every object the store holds at that moment (and its revision), as bytes in a file;
- a restore replaces the store's objects with the snapshot's; the API server does not answer while the static pods
  are stopped, nor for a few requests after the manifests are back (the kubelet restarts etcd and the API server).
The tools come from gcr.io/etcd-development/etcd:v<the cluster's etcd version>, which `ctr` pulls from the
registry (a node that cannot reach it fails like `ctr images pull` does) and the scripts run; the version is the
one kubeadm's etcd image carries (the static pod's tag).
"""

from __future__ import annotations

import copy
import datetime
import fnmatch
import hashlib
import json
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.sim.sim_node import SimNode

# kubeadm's etcd for Kubernetes 1.34–1.36: registry.k8s.io/etcd:3.6.11-0 (kubernetes/kubernetes#138746)
ETCD_IMAGE = "registry.k8s.io/etcd:3.6.11-0"
IMAGES = "/var/lib/containerd/sim-images/"  # where the sim keeps which images containerd has
WANTS = "/etc/systemd/system/timers.target.wants/"
RESTART_REQUESTS = 3  # API requests refused after the manifests are back, while the kubelet restarts the pods
_lock = threading.Lock()


def tools_image(repo: str) -> str:
    """The tools image the scripts derive from the etcd static pod's tag (3.6.11-0 → v3.6.11)."""
    return f"{repo}:v{ETCD_IMAGE.rsplit(':', 1)[1].split('-')[0]}"


class BackupScripts:
    """The backup scripts of a SimNode (mixed into it: uses its `files`, `lab`, `cluster`, `advertised`)."""

    registry_unreachable = False  # a test cuts this node off from gcr.io (`ctr images pull` fails)
    static_pods = "running"  # "stopped" while a restore has the manifests aside, then "starting"
    restart_countdown = 0

    # -- what the API server sees ----------------------------------------------------------------------------
    def static_pods_up(self: SimNode) -> bool:
        """Whether etcd and the API server run: not while their manifests are aside, and not for the first
        RESTART_REQUESTS questions after they are back."""
        with _lock:
            if self.static_pods == "stopped":
                return False
            if self.static_pods == "starting":
                self.restart_countdown -= 1
                if self.restart_countdown <= 0:
                    self.static_pods = "running"
                return False
            return True

    # -- helpers ---------------------------------------------------------------------------------------------
    def _pull(self: SimNode, image: str) -> tuple[int, str] | None:
        if self.files.get(IMAGES + image) is not None:
            return None
        if self.registry_unreachable:
            host = image.split("/", 1)[0]
            return 1, (f"pulling {image}\nctr: failed to resolve reference \"{image}\": failed to do request: Head "
                       f"\"https://{host}/v2/\": dial tcp: lookup {host}: no such host")
        self.files[IMAGES + image] = b"pulled"
        return None

    def _not_control_plane(self: SimNode, p) -> tuple[int, str] | None:
        if self.advertised is None:  # kubeadm init never ran here: no etcd static pod
            return 3, (f"no etcd image in {p['etcd_manifest']}: this node is not a kubeadm control plane with "
                       "stacked etcd")
        return None

    def _etcd_down(self: SimNode) -> tuple[int, str] | None:
        cluster = self.lab.clusters[self.cluster]
        if not cluster.api_up():
            return 1, ("Error: context deadline exceeded: failed to dial endpoint https://127.0.0.1:2379 "
                       "(etcd is not running)")
        return None

    # -- backup.etcd-snapshot ----------------------------------------------------------------------------------
    def _backup_etcd_snapshot(self: SimNode, p, address):
        if failed := self._not_control_plane(p):
            return failed
        tools = tools_image(p["tools_repo"])
        mode = p["mode"]
        if mode == "probe":
            lines = [f"tools={tools}", f"tools_present={'yes' if self.files.get(IMAGES + tools) else 'no'}"]
            for path in (p["script_path"], p["service_path"], p["timer_path"]):
                data = self.files.get(path)
                lines.append(f"sha256 {hashlib.sha256(data).hexdigest() if data is not None else 'missing'} {path}")
            enabled = self.files.get(WANTS + p["timer_unit"]) is not None
            # an enabled timer is started at every boot (timers.target)
            lines += [f"timer_enabled={'enabled' if enabled else ''}", f"timer_active={'active' if enabled else ''}"]
            return 0, "\n".join(lines)
        if failed := self._pull(tools):
            return failed
        if mode == "install":
            for path in (p["script_path"], p["service_path"], p["timer_path"]):
                if self.files.get(path) is None:
                    return 5, f"Failed to enable unit: Unit file {path.rsplit('/', 1)[1]} does not exist."
            self.files[WANTS + p["timer_unit"]] = self.files[p["timer_path"]]
            return 0, (f"etcdctl version: 3.6.11\nAPI version: 3.6\netcdutl version: 3.6.11\nAPI version: 3.6\n"
                       f"timer {p['timer_unit']} enabled; tools {tools}")
        if failed := self._etcd_down():
            return failed
        store = self.lab.clusters[self.cluster].store
        with store.lock:
            data = json.dumps({"revision": store.version,
                               "objects": [[list(k), o] for k, o in store.objects.items()]}).encode()
        name = f"etcd-{datetime.datetime.now(datetime.UTC).strftime('%Y%m%dT%H%M%SZ')}.db"
        path = f"{p['backup_dir']}/{name}"
        self.files[path] = data
        taken = sorted((k for k in self.files if fnmatch.fnmatch(k, f"{p['backup_dir']}/etcd-*.db")), reverse=True)
        for old in taken[int(p["keep"]):]:
            del self.files[old]
        return 0, (f"Snapshot saved at /work/{name}.part\n+----------+----------+------------+------------+\n"
                   f"snapshot={path} size={len(data)}")

    # -- backup.etcd-restore ---------------------------------------------------------------------------------
    def _backup_etcd_restore(self: SimNode, p, address):
        if failed := self._not_control_plane(p):
            return failed
        if failed := self._pull(tools_image(p["tools_repo"])):
            return failed
        raw = self.files.get(p["snapshot"])
        if raw is None:
            return 1, f"Error: stat {p['snapshot']}: no such file or directory"
        try:
            snap = json.loads(raw)
            objects = {tuple(k): o for k, o in snap["objects"]}
        except (ValueError, KeyError, TypeError):
            return 1, "Error: snapshot file integrity check failed: not an etcd snapshot"
        cluster = self.lab.clusters[self.cluster]
        with _lock:
            self.static_pods = "stopped"
        store = cluster.store
        with store.lock:
            store.objects = copy.deepcopy(objects)
            store._custom = None  # the served kinds are those of the restored CRDs
            # --bump-revision 1000000000: every revision after the restore is above any a client has seen
            store.version = max(store.version, int(snap["revision"])) + 1_000_000_000
        previous = f"{p['data_dir']}.before-restore-{p['stamp']}"
        self.files[previous + "/member/snap/db"] = b"the data before the restore"
        with _lock:
            self.static_pods, self.restart_countdown = "starting", RESTART_REQUESTS
        return 0, f"restored snapshot {p['snapshot']}\nprevious={previous}"

    def _backup_etcd_restore_finish(self: SimNode, p, address):
        if not p["previous"].startswith("/var/lib/etcd.before-restore-"):
            return 2, f"refusing to remove {p['previous']}: not a data directory a restore moved aside"
        for key in [k for k in self.files if k.startswith(p["previous"] + "/")]:
            del self.files[key]
        return 0, f"removed {p['previous']}"

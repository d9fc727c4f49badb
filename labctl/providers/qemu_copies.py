"""Copies of the QEMU provider's VMs (a mixin of QemuProvider): whole-VM copies for snapshots (labctl/snapshots.py)
and golden images kept as flattened qcow2 files in the image cache (labctl/golden.py).

It uses the provider's `_dir`, `_meta`, `_vm_dirs`, `_pid`, `_run` and `qemu_img`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import images
from ..errors import ProviderError


class Copies:
    RUNTIME_FILES = frozenset({"qemu.pid", "run.json", "qmp.sock"})  # a running QEMU's, never part of a copy

    def clone_vm(self, source: str, target: str) -> None:
        self._copy_check(source, target)
        src, dst = self._dir(source), self._dir(target)
        shutil.rmtree(dst, ignore_errors=True)  # an unfinished copy (vm.json is written last)
        dst.mkdir(parents=True, mode=0o700)
        try:
            # disk.qcow2 is an overlay whose backing file is the read-only base image: a copy of the overlay is a
            # full copy of the VM's disk. vm.json keeps its MACs, port and instance-id: the copy is the same machine.
            for f in sorted(p for p in src.iterdir() if p.is_file() and p.name not in self.RUNTIME_FILES | {"vm.json"}):
                shutil.copyfile(f, dst / f.name)
                (dst / f.name).chmod(0o600)
            shutil.copyfile(src / "vm.json", dst / "vm.json")
            (dst / "vm.json").chmod(0o600)
        except BaseException:
            shutil.rmtree(dst, ignore_errors=True)
            raise

    def delete_vm(self, name: str) -> bool:
        name = self._own_vm(name)
        directory = self._dir(name)
        if not directory.exists():
            return False
        if self._pid(name) is not None:
            raise ProviderError(f"{name}: QEMU is running it; stop it first")
        shutil.rmtree(directory)
        return True

    def vm_disk_bytes(self, name: str) -> int:
        if self._meta(name) is None:
            raise ProviderError(f"{name}: no such VM (no {self._dir(name) / 'vm.json'})")
        return sum(f.stat().st_blocks * 512 for f in self._dir(name).iterdir() if f.is_file())

    # -- golden images (labctl/golden.py): flattened qcow2 files in the image cache ---------------------------
    def golden_path(self, name: str) -> Path:
        """Where the golden image `name` lives: `<cache>/labctl-k8s-<hash>.qcow2` (labctl/images.py cache_dir())."""
        return images.cache_dir() / f"{name}.qcow2"

    def golden_source(self, name: str) -> str | None:
        """What `create` uses as the backing file for the golden image `name`, or None when there is none."""
        path = self.golden_path(name)
        return str(path) if path.is_file() else None

    def keep_golden(self, build_vm: str, name: str) -> None:
        """Keep the stopped `build_vm`'s disk as the golden image `name`: `qemu-img convert` flattens the overlay
        and its base into one standalone qcow2 (the base image may be replaced or deleted later), written beside
        and renamed into place, so a half-written image is never found."""
        if self._pid(build_vm) is not None:
            raise ProviderError(f"{build_vm}: is running; only a stopped VM's disk is consistent")
        target = self.golden_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        part.unlink(missing_ok=True)
        try:
            self._run([self.qemu_img, "convert", "-O", "qcow2", str(self._dir(build_vm) / "disk.qcow2"), str(part)],
                      build_vm, timeout=None)
            part.rename(target)
        finally:
            part.unlink(missing_ok=True)

    def golden_disk_bytes(self, name: str) -> int:
        path = self.golden_path(name)
        return path.stat().st_blocks * 512 if path.is_file() else 0

    def push_golden(self, name: str, reference: str) -> None:
        raise ProviderError("the qemu provider keeps golden images as local qcow2 files and has no registry to push "
                            "to", hint=f"copy {self.golden_path(name)} instead")

    def delete_golden(self, name: str) -> bool:
        """Delete the image file, unless a VM of this lab still has it as its disk's backing file (it would lose
        its disk: every VM cloned from it is an overlay on it). True when there was one."""
        path = self.golden_path(name)
        if not path.is_file():
            return False
        users = [d.name for d in self._vm_dirs() if (self._meta(d.name) or {}).get("base") == str(path.resolve())]
        if users:
            raise ProviderError(f"{name}: the disks of {', '.join(users)} are overlays on {path}; not deleted",
                                hint="`labctl destroy` those VMs first")
        path.unlink()
        return True

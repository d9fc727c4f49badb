#!/usr/bin/env bash
# A CI smoke run on a Linux host with QEMU: one small Kubernetes cluster from `labctl init --provider qemu`
# (the host architecture's Ubuntu 24.04 cloud image, the rootless lab network, nodes sized to the host), installed,
# then `labctl smoke` writing JUnit XML. docs/ci.md shows it in a GitHub Actions job; tests/sim/test_ci_smoke.py
# runs this very script against the simulated lab.
#
# Environment (all optional):
#   LABCTL          the labctl command (default: labctl), e.g. "python -m labctl"
#   LABCTL_CI_DIR   the lab's directory, where clusters.json and .labctl/ go (default: ./ci-lab)
#   LABCTL_CI_JUNIT where the JUnit XML goes (default: $LABCTL_CI_DIR/smoke-junit.xml)
# The exit status is the first failing step's: 2 for a bad clusters.json, 1 for a blocker or a failed step.
set -euo pipefail

read -r -a labctl <<< "${LABCTL:-labctl}"
lab_dir=${LABCTL_CI_DIR:-ci-lab}
junit=${LABCTL_CI_JUNIT:-$lab_dir/smoke-junit.xml}
case $junit in
  /*) ;;
  *) junit=$PWD/$junit ;;  # the steps below run inside the lab's directory
esac

mkdir -p "$lab_dir"
cd "$lab_dir"

step() {
  echo "::group::labctl $*"  # a foldable section in GitHub Actions' log; a plain line elsewhere
  "${labctl[@]}" "$@"
  echo "::endgroup::"
}

step init --provider qemu --force
step validate
step doctor
step install
step smoke --junit "$junit"
echo "smoke checks passed: $junit"

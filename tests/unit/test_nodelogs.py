"""The node script of `labctl logs` (templates/node/logs.sh.j2): it parses, passes shellcheck, runs for real on this
machine (whatever of journalctl, crictl and dmesg it has: a missing or failing source is recorded, not fatal) and
leaves one private tarball whose members labctl reads back."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from labctl.errors import UsageError
from labctl.nodelogs import UNITS, _members, logs_script, since_argument
from labctl.remote.login import remote_command
from tests.conftest import shellcheck


@pytest.mark.parametrize("extras", [True, False])
def test_the_script_parses_and_passes_shellcheck(tmp_path, extras):
    path = tmp_path / "logs.sh"
    path.write_text(logs_script(list(UNITS), "-2h", extras).text)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True).returncode == 0
    result = subprocess.run([shellcheck(), "--shell=bash", "--severity=style", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


def test_values_reach_the_script_quoted():
    text = logs_script(["kubelet"], "-1h; touch /tmp/pwned", False).text
    assert "--since='-1h; touch /tmp/pwned'" in text


def test_it_runs_here_and_leaves_one_private_tarball(tmp_path):
    done = subprocess.run(["bash", "-s"], input=logs_script(list(UNITS), None, True).text, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    tarball = Path(done.stdout.strip().splitlines()[-1])
    try:
        assert stat.S_IMODE(tarball.stat().st_mode) == 0o600
        assert not tarball.with_suffix("").exists()  # the staging directory is gone
        members = _members("here", tarball.read_bytes())
    finally:
        tarball.unlink()
    assert {"journal-kubelet.log", "journal-containerd.log", "crictl-ps.txt", "dmesg.txt"} <= set(members)


@pytest.mark.parametrize("duration, expected", [("30m", "-30m"), ("2h", "-2h"), ("1h30m", "-1h30m"), (None, None)])
def test_durations_become_journalctl_relative_times(duration, expected):
    assert since_argument(duration) == expected


@pytest.mark.parametrize("duration", ["2 hours", "-1h", "1x", "", "yesterday"])
def test_anything_else_is_refused(duration):
    with pytest.raises(UsageError, match="not a duration"):
        since_argument(duration)


def test_ssh_remote_command_keeps_several_words_and_passes_one_command_line():
    assert remote_command(["ls", "-l", "a b"]) == ["ls -l 'a b'"]
    assert remote_command(["journalctl -u kubelet | tail"]) == ["journalctl -u kubelet | tail"]
    assert remote_command([]) == []

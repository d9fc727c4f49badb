"""`labctl --version` and `labctl completion bash|zsh|fish`, through the CLI (issue 18, item 3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import labctl
from tests.conftest import run_cli

ROOT = Path(__file__).parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_is_the_package_version():
    assert labctl.__version__ == VERSION  # the two places it is written agree
    for args in (["--version"], ["version"], ["status", "--version"]):
        result = run_cli(*args)
        assert (result.code, result.out) == (0, f"labctl {VERSION}\n"), args
    as_json = run_cli("--json", "version")
    assert as_json.code == 0 and json.loads(as_json.out) == {"version": VERSION}


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o default -F _labctl_completion labctl"),
                                          ("zsh", "compdef _labctl_completion labctl"),
                                          ("fish", "complete --command labctl")])
def test_completion_prints_the_script(shell, marker):
    result = run_cli("completion", shell)
    assert result.code == 0, result.err
    assert marker in result.out and "_LABCTL_COMPLETE=complete_" + shell in result.out


def test_completion_of_an_unknown_shell_is_a_usage_error():
    result = run_cli("completion", "tcsh")
    assert result.code == 2 and "no completion for shell 'tcsh'" in result.err and "bash, zsh, fish" in result.err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_bash_script_completes_commands_and_options():
    """The printed script sourced into a real bash, asked as bash asks on Tab (the command name as $1)."""
    script = run_cli("completion", "bash").out
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    assert shutil.which("labctl", path=env["PATH"]), "the labctl entry point is installed beside python"

    def complete(*words: str) -> list[str]:
        probe = f"{script}\nCOMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}; _labctl_completion labctl; " \
                'printf "%s\\n" "${COMPREPLY[@]}"'
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("labctl", "sta") == ["status"]
    assert "--cluster" in complete("labctl", "install", "--cl")

"""The README and completions stay true to the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ultrasinger_gpu_cli.components import tiers_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_readme_prints_the_tier_table_from_the_code():
    assert tiers_markdown() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_changelog_has_an_unreleased_section():
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("shell", "name"), [("bash", "ugpu.bash"), ("zsh", "_ugpu"), ("fish", "ugpu.fish"),
                                             ("powershell", "ugpu.ps1")])  # fmt: skip
def test_completion_scripts_match_what_the_cli_generates(shell, name):
    env = {**os.environ, "_UGPU_COMPLETE": f"source_{shell}"}
    code = "from ultrasinger_gpu_cli.cli import app; app(prog_name='ugpu')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout and out.stdout == (ROOT / "completions" / name).read_text(encoding="utf-8")

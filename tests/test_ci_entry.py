"""CI's entry point runs the README's test command, also under a plain POSIX sh (dash)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_test_command() -> str:
    block = re.search(r"## Two commands\n\n```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return next(line.split("#")[0].strip() for line in block.splitlines() if "test" in line)


def test_ci_runs_the_readme_test_command():
    cmd = readme_test_command()
    assert cmd == "bash scripts/test.sh"
    assert re.search(rf"^exec {re.escape(cmd)}\b", (ROOT / ".ci" / "run").read_text(), re.M)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_ci_entry_reaches_pytest_under_posix_sh():
    # sh is dash on Debian: a bash-only line (e.g. `set -o pipefail`) would stop it before any test ran
    out = subprocess.run(["sh", ".ci/run", "--collect-only", "-q", "tests/test_visualizations.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\d+ tests? collected", out.stdout), out.stdout

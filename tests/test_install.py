"""The project is an installable package: a wheel built from the repository carries the library, the studio, the
figures and their data files, and its console script works from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel installed into a folder of its own (dependencies come from this interpreter's environment)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("pruner", "studio", "visualizations"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp / "dist").glob("adapt_pruner_studio-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(tmp / "site")}  # ahead of the editable install
    away = tmp / "elsewhere"
    away.mkdir()
    return tmp / "site", env, away


def test_the_wheel_holds_the_packages_and_their_data(installed):
    site, env, away = installed
    code = ("import pruner, studio, visualizations, sys\n"
            "from pruner.data import load_text\n"
            "from studio.ui import CSS\n"
            f"assert all(m.__file__.startswith({str(site)!r}) for m in (pruner, studio, visualizations))\n"
            "assert len(load_text('wikitext2', 'test')) > 1_000_000 and 'status-box' in CSS\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=away, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_console_script_runs_from_anywhere(installed):
    site, env, away = installed
    out = subprocess.run([str(site / "bin" / "adapt-pruner"), "--help"], cwd=away, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "prune" in out.stdout and "accel" in out.stdout and "export" in out.stdout
    out = subprocess.run([str(site / "bin" / "adapt-pruner"), "prune", "--target", "nan", "--model", "nowhere/x/y"],
                         cwd=away, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("error:"), out.stderr[-2000:]

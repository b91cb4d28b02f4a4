"""scripts/serve and scripts/bootstrap, run for real in a copy of the repo whose ``.venv``
holds recording stand-ins for python and p13n (no network, nothing installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]

RECORDER = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$(dirname "$0")/../calls"
"""


def copy_with_fake_venv(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for script in ("bootstrap", "serve"):
        shutil.copy2(ROOT / "scripts" / script, repo / "scripts" / script)
    shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "p13n"):
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    return repo


def calls(repo: Path) -> list[str]:
    path = repo / ".venv" / "calls"
    return path.read_text().splitlines() if path.exists() else []


def run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(repo / "scripts" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_installs_only_the_package_then_runs_p13n_serve(tmp_path: Path) -> None:
    repo = copy_with_fake_venv(tmp_path)
    done = run(repo, "serve", "--port", "8123")
    assert done.returncode == 0, done.stderr
    assert calls(repo) == [
        "python -m pip install --quiet --disable-pip-version-check -e .",
        "p13n serve --port 8123",
    ]
    # Up to date: the second start installs nothing.
    assert run(repo, "serve").returncode == 0
    assert calls(repo)[2:] == ["p13n serve"]


def test_bootstrap_installs_the_dev_tools_for_the_tests_and_serve_reuses_them(
    tmp_path: Path,
) -> None:
    repo = copy_with_fake_venv(tmp_path)
    assert run(repo, "bootstrap").returncode == 0
    assert calls(repo) == ["python -m pip install --quiet --disable-pip-version-check -e .[dev]"]
    assert run(repo, "serve").returncode == 0
    assert calls(repo)[1:] == ["p13n serve"]  # the dev install holds what serving needs
    wrong = run(repo, "bootstrap", "prod")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "scripts/bootstrap: expected 'dev' or 'serve', got 'prod'"

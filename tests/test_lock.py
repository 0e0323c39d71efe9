"""The lock: scripts/lock --check passes on the tree as committed and fails once pyproject asks for more."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _check(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(tree / "scripts" / "lock"), "--check"],
        env={**os.environ, "OSTINATO_VENV": sys.prefix},  # the environment running these tests has uv
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "requirements.lock", "README.md", "scripts/lock"):
        shutil.copy(ROOT / name, tree / name)
    return tree


def test_the_committed_lock_matches_pyproject(tmp_path: Path) -> None:
    done = _check(_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "matches" in done.stdout


def test_a_stale_lock_fails_the_check(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('    "rich>=13",\n', '    "rich>=13",\n    "tomli-w>=1.0",\n')
    )
    done = _check(tree)
    assert done.returncode == 1
    assert "+tomli-w==" in done.stdout and "requirements.lock is stale" in done.stderr


def test_the_lock_pins_every_package_with_hashes_and_names_no_index() -> None:
    lock = (ROOT / "requirements.lock").read_text()
    pins = [line for line in lock.splitlines() if "==" in line and not line.startswith("#")]
    assert len(pins) > 40
    assert all(line.rstrip().endswith("\\") for line in pins), "every pin is followed by its hashes"
    assert "--index-url" not in lock and "http" not in lock

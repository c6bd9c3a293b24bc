"""A copy of the repository as a fresh clone has it, for tests that build, install or run it the way users do."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What a working tree holds that a clone does not: a build must not see another build's leftovers (they would hide
# a missing package-data declaration), and a first run must not find a virtualenv already made.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "results", "node_modules"
)


def copy_source_tree(destination: Path) -> Path:
    shutil.copytree(ROOT, destination, ignore=NOT_IN_A_CLONE)
    return destination

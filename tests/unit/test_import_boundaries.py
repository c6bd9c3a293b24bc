"""A job imports the publisher alone: no server module, no server dependency, no server setting read."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sse_progress.config import ConfigError, Settings

SERVER_DEPENDENCIES = ("starlette", "uvicorn", "prometheus_client", "sse_starlette")
# Values the server refuses; a job's process may well run with them set (a shared .env, a Heroku app's config).
BAD_SERVER_SETTINGS = {"SSE_PROGRESS_HEARTBEAT": "soon", "SSE_PROGRESS_LOG_FORMAT": "xml", "SSE_PROGRESS_POLL_MS": "1"}

JOB = f"""
import json, sys
SERVER_DEPENDENCIES = {SERVER_DEPENDENCIES!r}
import sse_progress
from sse_progress import AsyncProgressTracker, ProgressTracker

directory = sys.argv[1]
ProgressTracker(3, tipo="redis", redis_url="redis://127.0.0.1:9/0", json_dir=directory, outbox_dir=directory).close()
AsyncProgressTracker(3, tipo="redis", redis_url="redis://127.0.0.1:9/0", json_dir=directory, outbox_dir=directory)
loaded = sorted(sys.modules)
print(json.dumps({{
    "server_dependencies": [name for name in loaded if name.split(".")[0] in SERVER_DEPENDENCIES],
    "server_modules": [name for name in loaded if name.startswith("sse_progress.server")],
    "package_modules": len([name for name in loaded if name.startswith("sse_progress")]),
}}))
"""


def run_job(tmp_path: Path) -> dict[str, object]:
    env = {**os.environ, **BAD_SERVER_SETTINGS}
    result = subprocess.run(
        [sys.executable, "-c", JOB, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_bad_settings_are_bad_for_the_server() -> None:
    with pytest.raises(ConfigError, match="SSE_PROGRESS_HEARTBEAT"):
        Settings.from_env(BAD_SERVER_SETTINGS)


def test_a_tracker_survives_bad_server_settings_and_imports_no_server(tmp_path: Path) -> None:
    report = run_job(tmp_path)
    assert report["server_dependencies"] == []
    assert report["server_modules"] == []


# Each part may import the parts of a lower rank only (and itself); cli.py and demo.py sit on top.
RANKS = {
    "protocol": 0,
    "config": 0,
    "exits": 0,
    "ports": 0,
    "cancellation": 0,
    "engines": 1,
    "publisher": 2,
    "follower": 2,
    "server": 3,
}
TOP = {"cli", "demo", "__init__"}
PACKAGE = Path(__file__).resolve().parents[2] / "sse_progress"


def imported_parts(path: Path) -> set[str]:
    """The parts of sse_progress a module imports, at module level or inside functions."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sse_progress."):
            parts.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            parts |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("sse_progress.")}
    return parts


def test_each_part_imports_only_the_parts_below_it() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if part in TOP:
            continue
        for imported in imported_parts(path) - {part}:
            if imported in TOP or RANKS[imported] >= RANKS[part]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert upward == []

"""``./scripts/demo --rpa`` on a fresh clone: it makes its virtualenv, installs what the bot needs (Playwright; the
browser is Debian's Chromium) and runs the bot, whose every screen a follower of the printed URL receives.

Slow by nature (a virtualenv and an install from the package index, through pip's cache, then the bot's 15
screens in Chromium): about half a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from examples.rpa_quote.quote_site import TOTAL_TELAS
from tests.support.processes import free_port
from tests.support.source_tree import copy_source_tree

RUN_TIMEOUT = 600


def test_demo_rpa_on_a_fresh_clone_installs_playwright_and_runs_the_bot() -> None:
    work = Path(tempfile.mkdtemp(prefix="sse-progress-clone-"))
    clone = copy_source_tree(work / "sse-progress")
    # A user's shell: no virtualenv active (this test's own venv left out of PATH).
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != str(Path(sys.executable).parent))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSE_PROGRESS_", "VIRTUAL_ENV"))}
    port, session = free_port(), "clone-" + os.urandom(4).hex()
    demo = subprocess.Popen(
        ["./scripts/demo", "--rpa", "--port", str(port), "--session", session],
        cwd=clone,
        env={**env, "PATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines = iter(demo.stdout.readline, "")
        banner = next((line for line in lines if "sse-progress demo:" in line), "(the demo printed nothing)")
        assert "the Playwright quote bot is starting" in banner, banner
        stream_url = next(line for line in lines if "curl -N" in line).split("'")[1]
        with httpx.stream("GET", stream_url, timeout=httpx.Timeout(10, read=RUN_TIMEOUT)) as stream:
            frames = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
        assert [frame["etapa_atual"] for frame in frames if frame["status"] == "running"][-1] == TOTAL_TELAS
        assert frames[-1]["status"] == "success", frames[-1]
        said = next((line for line in lines if "the quote bot" in line), "(nothing)")
        assert "the quote bot finished" in said, said
        assert (clone / ".venv" / "bin" / "python").exists()
    finally:
        demo.terminate()
        demo.communicate(timeout=15)
        shutil.rmtree(work, ignore_errors=True)

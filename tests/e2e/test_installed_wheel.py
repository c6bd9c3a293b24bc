"""The package as users install it: a wheel built from this tree, installed (not editable) into a fresh virtualenv,
first without extras (a job's install: no server, and ``serve`` says what to add), then with the ``server``
extra, and ``sse-progress demo`` run from an unrelated directory. The page and every file of the web client must come
from the installed package, with the right content types, and the page must follow the demo job to 100 %.

Slow by nature (a build and an install from the package index, through pip's cache): about a minute.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect
from web_support import WAIT_MS

from tests.support.processes import free_port
from tests.support.source_tree import copy_source_tree

ROOT = Path(__file__).resolve().parents[2]
WEB_FILES = sorted(path.name for path in (ROOT / "sse_progress" / "web").iterdir() if path.is_file())
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}
INSTALL_TIMEOUT = 600


@dataclass
class InstalledWheel:
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed_wheel() -> Iterator[InstalledWheel]:
    """Build the wheel from a clean copy of this tree and install it, with its dependencies, into a new venv."""
    work = Path(tempfile.mkdtemp(prefix="sse-progress-wheel-"))
    source = work / "source"
    copy_source_tree(source)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(source)], work)
    (wheel,) = (work / "dist").glob("sse_progress-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], work)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], work)
    yield InstalledWheel(wheel, venv)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def installed_server(installed_wheel: InstalledWheel) -> InstalledWheel:
    """The same venv after ``pip install 'sse-progress[server]'`` (from the same wheel)."""
    run([str(installed_wheel.bin / "python"), "-m", "pip", "install", "-q", f"{installed_wheel.wheel}[server]"], ROOT)
    return installed_wheel


def test_the_base_install_runs_a_tracker_and_serve_names_the_extra_to_install(
    installed_wheel: InstalledWheel, tmp_path: Path
) -> None:
    python = str(installed_wheel.bin / "python")
    job = (
        "import importlib.util, sse_progress\n"
        "tracker = sse_progress.ProgressTracker(2, tipo='json', json_dir='.')\n"
        "tracker.complete('done')\n"
        "print([m for m in ('starlette', 'uvicorn', 'prometheus_client') if importlib.util.find_spec(m)])"
    )
    assert run([python, "-c", job], tmp_path).strip() == "[]"  # runs, and the server's dependencies are absent
    for command in ("serve", "demo", "bridge"):
        result = subprocess.run(
            [str(installed_wheel.bin / "sse-progress"), command], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode == 69, (command, result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'sse-progress[server]'" in lines[0], (command, result.stderr)


def test_the_wheel_holds_every_package_the_web_client_and_the_license(installed_wheel: InstalledWheel) -> None:
    names = set(zipfile.ZipFile(installed_wheel.wheel).namelist())
    for name in WEB_FILES:
        assert f"sse_progress/web/{name}" in names, f"{name} is missing from the wheel"
    packages = {path.parent.relative_to(ROOT).as_posix() for path in (ROOT / "sse_progress").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, f"package {package} is missing from the wheel"
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), "LICENSE is missing from the wheel"


def test_the_installed_demo_serves_every_file_and_its_page_reaches_100_percent(
    installed_server: InstalledWheel, browser: Browser
) -> None:
    installed_wheel = installed_server
    elsewhere = Path(tempfile.mkdtemp(prefix="sse-progress-elsewhere-"))  # no checkout to fall back on
    where = run(
        [str(installed_wheel.bin / "python"), "-c", "import sse_progress; print(sse_progress.__file__)"], elsewhere
    )
    assert Path(where.strip()).is_relative_to(installed_wheel.venv), where

    port = free_port()
    demo = subprocess.Popen(
        [str(installed_wheel.bin / "sse-progress"), "demo", "--port", str(port), "--step-seconds", "0.1"],
        cwd=elsewhere,
        env={"PATH": "/usr/bin:/bin", "HOME": str(elsewhere)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        page_url = ""
        for line in demo.stdout:  # the demo prints its URLs once the server is up
            if "Open the page:" in line:
                page_url = line.split("Open the page:", 1)[1].strip()
                break
        assert page_url.startswith(f"http://127.0.0.1:{port}/?session="), "the demo did not print its page URL"

        base = f"http://127.0.0.1:{port}"
        page_answer = httpx.get(page_url)
        assert page_answer.status_code == 200, page_answer.text
        assert page_answer.headers["content-type"].startswith("text/html")
        assert page_answer.content == (ROOT / "sse_progress" / "web" / "index.html").read_bytes()
        for name in WEB_FILES:
            answer = httpx.get(f"{base}/static/{name}")
            assert answer.status_code == 200, (name, answer.status_code, answer.text[:300])
            assert answer.headers["content-type"].startswith(CONTENT_TYPES[Path(name).suffix]), (name, answer.headers)
            assert answer.content == (ROOT / "sse_progress" / "web" / name).read_bytes(), name

        context = browser.new_context()
        page = context.new_page()
        page.goto(page_url)
        expect(page.locator("#percent")).to_have_text("100%", timeout=WAIT_MS)
        expect(page.locator("#result")).to_have_attribute("data-state", "success", timeout=WAIT_MS)
        context.close()
    finally:
        demo.terminate()
        demo.wait(15)
        shutil.rmtree(elsewhere, ignore_errors=True)

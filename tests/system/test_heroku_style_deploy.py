"""A Heroku-style deploy, with this test playing the buildpack and the platform: the repository copied to a build
directory, a fresh virtualenv, ``pip install -r requirements.txt`` (what the Python buildpack runs), then the
Procfile's ``web`` line run by a Procfile runner (honcho) with ``$PORT``, ``SSE_PROGRESS_SECRET`` and a
``REDIS_URL`` that points at a real redis-server speaking TLS with a self-signed certificate and a password, as
Heroku Redis does (``rediss://``). A job on the same Redis publishes, a client streams every event, and SIGTERM
(what the platform sends on a restart) ends everything cleanly.

Slow by nature (an install from the package index, through pip's cache): about half a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sse_progress.protocol.tokens import Role, TokenAuthority
from tests.support.processes import STARTUP_TIMEOUT, free_port, wait_until
from tests.support.source_tree import copy_source_tree

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600
REDIS_PASSWORD = "p" + uuid.uuid4().hex
SECRET = "heroku-style-" + uuid.uuid4().hex
STEPS = 5

# A job on the platform (a worker dyno, a one-off): REDIS_URL and SSE_PROGRESS_REDIS_TLS_VERIFY from the environment.
JOB = f"""
import sys
from sse_progress import ProgressTracker

with ProgressTracker(total_etapas={STEPS}, session_id=sys.argv[1]) as tracker:
    for etapa in range(1, {STEPS} + 1):
        tracker.update_progress(etapa, f"Tela {{etapa}}")
    tracker.complete("Cotação concluída")
"""


def run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@dataclass
class TlsRedis:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    """redis-server with TLS only, a self-signed certificate made now, and a password: Heroku Redis's shape."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate: apt-get install openssl", pytrace=False)
    directory = Path(tempfile.mkdtemp(prefix="sse-progress-tls-redis-"))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=redis.internal",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(directory / "cert.pem"), "--tls-key-file", str(directory / "key.pem"),
         "--tls-auth-clients", "no", "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}"
    import redis

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, ssl_cert_reqs="none", socket_timeout=1).ping())
        except redis.RedisError:
            return False

    wait_until(answers, STARTUP_TIMEOUT, "redis-server with TLS")
    yield TlsRedis(url, process)
    process.terminate()
    process.wait(15)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def slug() -> Iterator[Path]:
    """The build directory after the buildpack's install step: the app's files and a venv made from requirements.txt."""
    work = Path(tempfile.mkdtemp(prefix="sse-progress-slug-"))
    app = work / "app"
    copy_source_tree(app)
    run([sys.executable, "-m", "venv", str(app / ".heroku-python")], work)
    run([str(app / ".heroku-python" / "bin" / "pip"), "install", "-q", "-r", "requirements.txt"], app)
    yield app
    shutil.rmtree(work, ignore_errors=True)


def test_the_files_a_platform_reads_are_there_and_agree() -> None:
    last = (ROOT / "requirements.txt").read_text().splitlines()[-1]
    assert last == ".[server]", "requirements.txt must install the project with its server extra"
    version = (ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", version), version
    manifest = json.loads((ROOT / "app.json").read_text())
    assert {"plan": "heroku-redis:mini"} in manifest["addons"]
    assert manifest["env"]["SSE_PROGRESS_SECRET"]["generator"] == "secret"
    assert manifest["env"]["SSE_PROGRESS_REDIS_TLS_VERIFY"]["value"] == "false"
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert "$PORT" in procfile["web"] and "0.0.0.0" in procfile["web"]
    # Behind the platform's router (the only thing that can reach a dyno), as docs/deploy.md says.
    assert "--forwarded-allow-ips '*'" in procfile["web"]


def test_the_procfile_web_line_serves_a_job_from_heroku_style_redis_and_stops_on_sigterm(
    slug: Path, tls_redis: TlsRedis
) -> None:
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent))
    assert honcho, "honcho is in the test extra: pip install -e '.[test]'"
    port = free_port()
    platform_env = {
        "PATH": f"{slug / '.heroku-python' / 'bin'}:/usr/bin:/bin",  # the slug's Python first, as on a dyno
        "HOME": str(slug),
        "PORT": str(port),
        "REDIS_URL": tls_redis.url,
        "SSE_PROGRESS_SECRET": SECRET,
        "SSE_PROGRESS_REDIS_TLS_VERIFY": "false",  # app.json's value: Heroku Redis's certificate is self-signed
    }
    web = subprocess.Popen(
        [honcho, "start", "web"], cwd=slug, env=platform_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if web.poll() is not None:
                raise AssertionError(f"the web process exited: {web.communicate()[0].decode()[-3000:]}")
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, STARTUP_TIMEOUT, "the Procfile's web process to be ready on Redis over TLS")

        session_id = "heroku-" + uuid.uuid4().hex[:12]
        token = TokenAuthority((SECRET,)).issue(session_id, Role.SUBSCRIBE, ttl=600)
        events: list[dict[str, object]] = []
        with httpx.stream("GET", f"{base}/sessions/{session_id}/events", params={"token": token}, timeout=30) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")  # the stream is open: now the job runs
            job = subprocess.run(
                [str(slug / ".heroku-python" / "bin" / "python"), "-c", JOB, session_id],
                cwd=slug, env=platform_env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert job.returncode == 0, job.stderr
            for line in lines:  # the server ends the stream after the terminal event
                if line.startswith("data:"):
                    events.append(json.loads(line.removeprefix("data:")))
        assert [event["etapa_atual"] for event in events] == [*range(1, STEPS + 1), STEPS]
        assert [event["status"] for event in events][-1] == "success"

        started = time.monotonic()
        web.send_signal(signal.SIGTERM)
        output, _ = web.communicate(timeout=30)
        stopped_in = time.monotonic() - started
    finally:
        if web.poll() is None:
            web.kill()
            web.wait(15)
    log = output.decode()
    # uvicorn re-raises the SIGTERM once its graceful shutdown is over, so "terminated by SIGTERM" is the clean exit
    # status (a hung shutdown would end in honcho's SIGKILL, rc=-9; a crash in a traceback and another status).
    assert re.search(r"web\.1 stopped \(rc=(0|-15)\)", log) and web.returncode in (0, 128 + signal.SIGTERM), log[-3000:]
    assert stopped_in < 15, f"took {stopped_in:.1f}s to stop"
    assert "Finished server process" in log and "Traceback" not in log, log[-3000:]
    assert f"engine: rediss://:***@127.0.0.1:{tls_redis.url.rsplit(':', 1)[1]}" in log, log[-3000:]
    assert f"listening on http://0.0.0.0:{port}" in log
    assert REDIS_PASSWORD not in log and SECRET not in log


def test_without_tls_verify_false_readyz_names_the_certificate_problem(tls_redis: TlsRedis) -> None:
    """What step 3 of the deploy guide warns about: the self-signed certificate is refused by default."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_PROGRESS_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "sse_progress.cli", "serve", "--port", str(port)],
        env={**env, "REDIS_URL": tls_redis.url, "SSE_PROGRESS_SECRET": SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        answers: list[httpx.Response] = []

        def answered() -> bool:
            try:
                answers.append(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10))
                return True
            except httpx.HTTPError:
                return False

        wait_until(answered, STARTUP_TIMEOUT, "the server to answer /readyz")
        assert answers[-1].status_code == 503
        assert "certificate verify failed" in answers[-1].text, answers[-1].text
        assert "set SSE_PROGRESS_REDIS_TLS_VERIFY=false" in answers[-1].json()["error"], answers[-1].text
    finally:
        server.terminate()
        server.wait(15)


def test_publish_to_a_self_signed_redis_names_the_setting_that_accepts_it(tls_redis: TlsRedis) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_PROGRESS_")}
    result = subprocess.run(
        [sys.executable, "-m", "sse_progress.cli", "publish", "tls-1", "--etapa", "1", "--redis-url", tls_redis.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 69, result
    assert "certificate verify failed" in result.stderr and "SSE_PROGRESS_REDIS_TLS_VERIFY=false" in result.stderr
    assert REDIS_PASSWORD not in result.stderr

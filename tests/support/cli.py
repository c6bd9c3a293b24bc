"""``sse-progress`` as the tests run it: a subprocess of this Python that sees none of the caller's settings, so a
test states every setting the command gets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its SSE_PROGRESS_* and REDIS_URL, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SSE_PROGRESS_") and k != "REDIS_URL"}
    return {**base, **(env or {})}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sse-progress *args`` run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "sse_progress.cli", *args], env=cli_env(env), capture_output=True, text=True, timeout=30
    )


@contextmanager
def started_cli(*args: str, env: dict[str, str] | None = None) -> Iterator[IO[str]]:
    """``sse-progress *args`` running for the ``with`` block, which reads what it prints (stderr included);
    terminated after it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sse_progress.cli", *args],
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        yield process.stdout
    finally:
        process.terminate()
        process.communicate(timeout=15)  # drains the pipe: a process blocked writing to it would not exit


def lines_until(output: IO[str], marker: str) -> list[str]:
    """The lines of ``output`` up to the first that contains ``marker`` (all of them, if the output ends first)."""
    lines: list[str] = []
    for line in output:
        lines.append(line)
        if marker in line:
            break
    return lines

"""Without the server extra, the commands that run the server say in one line what to install (exit 69)."""

from __future__ import annotations

import importlib.util

import pytest

from sse_progress import cli
from sse_progress.exits import EXIT_UNAVAILABLE


@pytest.mark.parametrize("command", ["serve", "demo", "bridge"])
def test_a_server_command_without_the_extra_names_what_to_install(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "uvicorn" else find_spec(name, *rest)
    )
    assert cli.main([command]) == EXIT_UNAVAILABLE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "uvicorn missing" in lines[0] and "pip install 'sse-progress[server]'" in lines[0]

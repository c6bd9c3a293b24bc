"""The older system, as its code was: its progress tracker (plain redis-py) and the bridge process that follows it."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.support.processes import ROOT, STARTUP_TIMEOUT, ManagedProcess, free_port, wait_until


class OldTracker:
    """The older bot's tracker: ``SET`` of its JSON with a 24 h TTL, then (optionally) the same update
    ``PUBLISH``ed on the unbraced channel, with its own ``datetime.now()`` as that code did."""

    def __init__(self, client: redis.Redis, session_id: str, total_etapas: int = 15, publish: bool = True) -> None:
        self.redis_client = client
        self.session_id = session_id
        self.total_etapas = total_etapas
        self.publish = publish

    def update_progress(
        self, etapa: int, mensagem: str = "", dados_extra: dict[str, Any] | None = None, status: str = "running"
    ) -> None:
        percentual = round(etapa / self.total_etapas * 100, 1)
        data = {
            "session_id": self.session_id,
            "etapa_atual": etapa,
            "total_etapas": self.total_etapas,
            "percentual": percentual,
            "status": status,
            "mensagem": mensagem,
            "dados_extra": dados_extra,
            "timestamp": datetime.now().isoformat(),
        }
        self.redis_client.setex(f"rpa:progress:{self.session_id}", 86400, json.dumps(data, ensure_ascii=False))
        if self.publish:
            # The same fields in the same order, behind a "type", with a timestamp of its own.
            progress_data = {"type": "progress_update", **data, "timestamp": datetime.now().isoformat()}
            progress_data["backend"] = "redis"
            channel = f"rpa:session:{self.session_id}"
            self.redis_client.publish(channel, json.dumps(progress_data, ensure_ascii=False))

    def complete(self, mensagem: str = "Cotação concluída") -> None:
        self.update_progress(self.total_etapas, mensagem, {"valor": 2399.5}, status="success")


class BridgeProcess(ManagedProcess):
    """``sse-progress bridge`` in a subprocess, with its metrics on a port of its own."""

    def __init__(self, redis_url: str, *extra: str) -> None:
        self.redis_url = redis_url
        self.extra = extra
        self.metrics_port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="sse-progress-bridge-", suffix=".log")[1])

    def start(self) -> None:
        self.log.write_text("")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sse_progress.cli", "bridge", "--redis-url", self.redis_url,
                 "--metrics-port", str(self.metrics_port), *self.extra],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(self._ready, STARTUP_TIMEOUT, f"the bridge (log: {self.log})")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the bridge exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
        return "bridge ready" in self.log.read_text()

    def counts(self) -> dict[tuple[str, str], float]:
        """``sse_progress_legacy_updates_total`` by (source, outcome)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        counts: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            if line.startswith("sse_progress_legacy_updates_total{"):
                labels, value = line.split("} ")
                fields = dict(part.split("=") for part in labels.split("{", 1)[1].split(","))
                key = (fields["source"].strip('"'), fields["outcome"].strip('"'))
                counts[key] = float(value)
        return counts

    def metric(self, name: str) -> float:
        """One unlabelled metric of the bridge's ``/metrics``."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        values = [float(line.split()[1]) for line in text.splitlines() if line.split(" ")[0] == name]
        assert values, f"{name} is not among the bridge's metrics"
        return values[0]

    def total(self, outcome: str) -> float:
        return sum(value for (_, kind), value in self.counts().items() if kind == outcome)

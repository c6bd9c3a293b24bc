"""The simulated quote job that ``sse-progress demo`` runs inside the server process."""

from __future__ import annotations

import asyncio
import random

from sse_progress.engines import Engine
from sse_progress.publisher.tracker import AsyncProgressTracker

SCREENS = (
    "Abrindo o site da seguradora",
    "Dados do segurado",
    "CPF e data de nascimento",
    "Endereço e CEP",
    "Estimativas de preço",
    "Veículo: marca e modelo",
    "Ano e versão do veículo",
    "Placa e chassi",
    "Uso do veículo",
    "Condutor principal",
    "Garagem e pernoite",
    "Coberturas",
    "Assistências",
    "Revisão dos dados",
    "Cotação final",
)

ESTIMATES: tuple[dict[str, str | float], ...] = (
    {"seguradora": "Porto", "valor": 2841.90, "franquia": 3500.0},
    {"seguradora": "Azul", "valor": 2399.50, "franquia": 4200.0},
    {"seguradora": "Allianz", "valor": 3012.00, "franquia": 3100.0},
    {"seguradora": "Tokio Marine", "valor": 2677.35, "franquia": 3800.0},
    {"seguradora": "HDI", "valor": 2519.80, "franquia": 4000.0},
)


async def run_simulated_quote(engine: Engine, session_id: str, step_seconds: float = 1.0) -> None:
    tracker = AsyncProgressTracker(total_etapas=len(SCREENS), session_id=session_id, engine=engine)
    async with tracker:
        await tracker.update_progress(0, "Iniciando a cotação", status="pending")
        for etapa, screen in enumerate(SCREENS, start=1):
            await asyncio.sleep(step_seconds * random.uniform(0.6, 1.4))
            mensagem = f"Tela {etapa}: {screen}"
            if etapa == 5:
                await tracker.update_progress_with_estimativas(etapa, mensagem, list(ESTIMATES))
            else:
                await tracker.update_progress(etapa, mensagem)
        cheapest = min(ESTIMATES, key=lambda estimate: float(estimate["valor"]))
        await tracker.complete("Cotação concluída", {"cotacao_final": cheapest})

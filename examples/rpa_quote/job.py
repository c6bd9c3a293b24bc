"""An RPA job: a Playwright bot that walks the 15 screens of a quote site and reports each one live.

This is the shape of a real quote bot: a script of what to type on each screen (``ROTEIRO``), a browser
driven with Playwright's sync API, and a ``ProgressTracker`` that publishes one event per screen so that
anyone watching the session (the demo page, a dashboard, a test) sees the job advance, the price estimates
scraped from screen 5 and, at the end, the final quote or the reason it failed.

By default the job starts its own copy of the sample site (``quote_site.py``) on a free local port::

    python -m examples.rpa_quote.job --progress-tracker redis --redis-url redis://127.0.0.1:6379/0 \\
        --session demo-1 [--break-at 7] [--slow-mo 300]

Exit status: 0 when the quote was obtained, 1 when the job failed (the failure is also published), 2 on a
usage error, 130 when interrupted (published as ``cancelled``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    # Run as a file (``python examples/rpa_quote/job.py``): make the repository root importable so that the
    # absolute imports below work the same way as under ``python -m examples.rpa_quote.job``.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from examples.rpa_quote.quote_site import BREAK_MODES, TOTAL_TELAS, running_quote_site
from sse_progress import ProgressTracker, add_progress_arguments

logger = logging.getLogger("rpa_quote")

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ENV = "SSE_PROGRESS_CHROMIUM"
# --headless: no display on servers; --no-sandbox: Chromium's sandbox does not work as root or in most
# containers; --disable-background-networking: no update checks or telemetry from a bot.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# --------------------------------------------------------------------------------------------------------
# The bot's script: what to type on each screen (in production: read from the customer's record)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passo:
    tela: int
    mensagem: str  # the progress message published once the screen is done
    campos: Mapping[str, str] = field(default_factory=dict)  # field name → value (a <select>'s option text)


ROTEIRO: tuple[Passo, ...] = (
    Passo(1, "Tela 1: dados do segurado", {"nome": "Maria da Silva", "data_nascimento": "14/03/1988"}),
    Passo(2, "Tela 2: CPF e contato", {"cpf": "529.982.247-25", "email": "maria.silva@example.com"}),
    Passo(3, "Tela 3: endereço (CEP)", {"cep": "01310-100", "numero": "1000"}),
    Passo(4, "Tela 4: dados do veículo", {"marca": "Toyota", "modelo": "Corolla XEi 2.0", "ano": "2021"}),
    Passo(5, "Tela 5: estimativas de preço", {"seguradora": "Porto"}),
    Passo(6, "Tela 6: placa", {"placa": "BRA2E19", "zero_km": "Não"}),
    Passo(7, "Tela 7: uso do veículo", {"uso": "Particular", "km_mensal": "Até 1.000 km"}),
    Passo(8, "Tela 8: condutor principal", {"condutor": "O próprio segurado", "idade_condutor": "37"}),
    Passo(9, "Tela 9: garagem", {"garagem_casa": "Sim", "garagem_trabalho": "Não"}),
    Passo(10, "Tela 10: coberturas", {"cobertura": "Compreensiva", "franquia": "Normal"}),
    Passo(11, "Tela 11: assistência 24h", {"guincho": "500 km", "carro_reserva": "7 dias"}),
    Passo(12, "Tela 12: vidros e terceiros", {"vidros": "Sim", "danos_terceiros": "R$ 100.000"}),
    Passo(13, "Tela 13: histórico", {"sinistros": "0", "classe_bonus": "3"}),
    Passo(14, "Tela 14: pagamento", {"forma_pagamento": "Cartão de crédito", "parcelas": "10"}),
    Passo(15, "Tela 15: cotação final"),
)
assert [p.tela for p in ROTEIRO] == list(range(1, TOTAL_TELAS + 1))


def respostas_do_roteiro() -> dict[str, str]:
    """Every answer the script gives, by field name (what the site will have stored at the end)."""
    return {nome: valor for passo in ROTEIRO for nome, valor in passo.campos.items()}


# --------------------------------------------------------------------------------------------------------
# Driving the site
# --------------------------------------------------------------------------------------------------------


class FalhaNaCotacao(Exception):
    """The job cannot go on. The message is published as the failure: it is what the watchers see."""


class TelaQuebrou(FalhaNaCotacao):
    """A screen did not behave as the script expects. The message names the screen."""

    def __init__(self, tela: int, motivo: str) -> None:
        super().__init__(f"Tela {tela} quebrou: {motivo}")
        self.tela = tela
        self.motivo = motivo


def parse_brl(texto: str) -> float:
    """``"R$ 1.234,50"`` → ``1234.5``."""
    match = re.search(r"\d{1,3}(?:\.\d{3})*,\d{2}", texto)
    if match is None:
        raise ValueError(f"não é um valor em reais: {texto!r}")
    return float(match.group().replace(".", "").replace(",", "."))


def _primeira_linha(exc: BaseException) -> str:
    """Playwright's messages carry a multi-line call log; its first line is the useful part."""
    linhas = str(exc).strip().splitlines()
    return linhas[0] if linhas else type(exc).__name__


def _ler_tabela(page: Page, seletor: str) -> list[list[str]]:
    """The cell texts of a table's body rows, in one round trip to the browser."""
    linhas: list[list[str]] = page.locator(f"{seletor} tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells, c => c.innerText.trim()))"
    )
    return linhas


def _esperar_pagina(page: Page, tela: int) -> tuple[str, str] | None:
    """Waits until screen ``tela`` or an error is displayed; returns ``(kind, text)`` of the error, or None.

    The site marks each screen with ``<main data-tela="N">`` and errors with ``data-erro`` (``"validacao"``
    when it refused what was typed, the HTTP status on an error page). Waiting for "screen N *or* an error"
    (rather than for a fixed time, or for a URL) makes a broken screen fail at once, with the site's own
    message, instead of after a timeout.
    """
    try:
        page.locator(f'main[data-tela="{tela}"], [data-erro]').first.wait_for()
    except PlaywrightTimeoutError:
        raise TelaQuebrou(tela, f"a tela não apareceu (página atual: {page.url})") from None
    # The marker can be attached before the rest of the document is parsed; wait for the whole of it.
    page.wait_for_load_state("domcontentloaded")
    erros = page.locator("[data-erro]")
    if erros.count() == 0:
        return None
    texto = "; ".join(" ".join(t.split()) for t in erros.all_inner_texts())
    return erros.first.get_attribute("data-erro") or "", texto


def abrir_tela(page: Page, tela: int) -> None:
    """Waits for screen ``tela``; raises ``TelaQuebrou`` if the site shows an error page instead."""
    erro = _esperar_pagina(page, tela)
    if erro is not None:
        raise TelaQuebrou(tela, f"o site respondeu com uma página de erro: {erro[1]}")


def confirmar_envio(page: Page, tela: int) -> None:
    """After "Continuar" on screen ``tela``: returns once the site has accepted it (it moved on, even if the
    next page is an error page: that is the next screen's failure); raises if it refused what was typed."""
    erro = _esperar_pagina(page, tela + 1)
    if erro is not None and erro[0] == "validacao":
        raise TelaQuebrou(tela, f"o site recusou os dados: {erro[1]}")


def preencher(page: Page, passo: Passo) -> None:
    for nome, valor in passo.campos.items():
        campo = page.locator(f'[name="{nome}"]')
        if campo.count() == 0:
            raise TelaQuebrou(passo.tela, f"campo {nome!r} não encontrado (o layout mudou?)")
        if campo.evaluate("el => el.tagName") == "SELECT":
            campo.select_option(label=valor)
        else:
            campo.fill(valor)


def continuar(page: Page, tela: int) -> None:
    botao = page.get_by_role("button", name="Continuar")
    # Checked up front: waiting for a button that is not there would only end in a timeout.
    if botao.count() == 0:
        raise TelaQuebrou(tela, "botão 'Continuar' não encontrado (o layout mudou?)")
    botao.click()


def ler_estimativas(page: Page) -> list[dict[str, Any]]:
    """Screen 5's table: ``[{"seguradora": "Porto", "valor": 1234.5, "franquia": 3000.0}, ...]``."""
    estimativas = [
        {"seguradora": seguradora, "valor": parse_brl(premio), "franquia": parse_brl(franquia)}
        for seguradora, premio, franquia in _ler_tabela(page, "#estimativas")
    ]
    if not estimativas:
        raise TelaQuebrou(5, "a tabela de estimativas está vazia")
    return estimativas


def ler_cotacao_final(page: Page) -> dict[str, Any]:
    """Screen 15's table, with typed values."""
    itens = {item: valor for item, valor in _ler_tabela(page, "#cotacao-final")}
    try:
        parcelas = re.fullmatch(r"(\d+)x de (.+)", itens["Parcelas"])
        if parcelas is None:
            raise ValueError(f"parcelas ilegíveis: {itens['Parcelas']!r}")
        return {
            "numero": itens["Número da cotação"],
            "seguradora": itens["Seguradora"],
            "cobertura": itens["Cobertura"],
            "premio_total": parse_brl(itens["Prêmio total"]),
            "franquia": parse_brl(itens["Franquia"]),
            "parcelas": int(parcelas.group(1)),
            "valor_parcela": parse_brl(parcelas.group(2)),
            "forma_pagamento": itens["Forma de pagamento"],
        }
    except (KeyError, ValueError) as exc:
        raise TelaQuebrou(TOTAL_TELAS, f"cotação final ilegível: {exc}") from None


def cotar(page: Page, site_url: str, tracker: ProgressTracker, pausa_s: float) -> dict[str, Any]:
    """Walks every screen, publishing each one as it is done; returns the final quote."""
    tela = 1
    try:
        page.goto(f"{site_url}/")
        for passo in ROTEIRO:
            tela = passo.tela
            abrir_tela(page, tela)
            if tela == TOTAL_TELAS:
                cotacao = ler_cotacao_final(page)
                tracker.update_progress(tela, mensagem=passo.mensagem)
                logger.info("[%2d/%d] %s", tela, TOTAL_TELAS, passo.mensagem)
                return cotacao
            estimativas = ler_estimativas(page) if tela == 5 else None
            preencher(page, passo)
            continuar(page, tela)
            # A screen is done when the site has accepted what was typed on it.
            confirmar_envio(page, tela)
            if estimativas is not None:
                tracker.update_progress_with_estimativas(tela, mensagem=passo.mensagem, estimativas=estimativas)
            else:
                tracker.update_progress(tela, mensagem=passo.mensagem)
            logger.info("[%2d/%d] %s", tela, TOTAL_TELAS, passo.mensagem)
            # Pacing only, so that a person watching the demo can follow along; nothing waits on it.
            time.sleep(pausa_s)
    except PlaywrightError as exc:  # timeouts, a crashed page, a refused connection...
        raise TelaQuebrou(tela, _primeira_linha(exc)) from exc
    raise AssertionError("unreachable: ROTEIRO ends with the final screen")


# --------------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.rpa_quote.job",
        description="Walks the 15 screens of the sample quote site with Playwright, reporting each one.",
    )
    add_progress_arguments(parser)
    parser.add_argument("--break-at", type=int, metavar="N", help="make the sample site break screen N")
    parser.add_argument(
        "--break-mode",
        choices=BREAK_MODES,
        default="error",
        help="how screen N breaks: an error page (default) or a missing 'Continuar' button",
    )
    parser.add_argument(
        "--slow-mo",
        type=int,
        default=300,
        metavar="MS",
        help="pause between screens, for people watching (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="how long to wait for a screen or an element (default: %(default)s)",
    )
    parser.add_argument("--site-url", metavar="URL", help="drive an already running quote site instead of starting one")
    return parser


def chromium_executable() -> str:
    return os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM


def run_job(argv: Sequence[str] | None = None) -> int:
    """Runs the job with command-line arguments ``argv``; returns the exit status (0 = quote obtained).

    Usable from Python too, e.g. by a test that runs the job in a thread while it watches the session (the
    Playwright sync API works in any thread without a running asyncio loop). Like any argparse program, it
    raises ``SystemExit(2)`` on a usage error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        tracker = ProgressTracker.from_arguments(args, total_etapas=TOTAL_TELAS)
    except ValueError as exc:  # e.g. a tracker kind that needs settings these options do not give
        parser.error(f"--progress-tracker {args.progress_tracker}: {exc}")
    # The tracker is opened first so that every failure below, even a missing browser, reaches the watchers;
    # an unexpected exception escaping this block is published by the tracker itself (as a failure).
    with tracker:
        # Without --session the tracker makes up an id: print it, it is what a watcher needs.
        print(f"session: {tracker.session_id}", flush=True)
        try:
            cotacao = _executar(args, tracker)
        except FalhaNaCotacao as exc:
            logger.error("%s", exc)
            tracker.fail(mensagem=str(exc))
            return 1
        except KeyboardInterrupt:  # Ctrl+C: an operator's decision, not a failure of the site
            tracker.cancel(mensagem="Cotação interrompida pelo operador")
            return 130
        tracker.complete(mensagem="Cotação concluída", dados_extra={"cotacao_final": cotacao})
        logger.info("Cotação %s obtida: %s", cotacao["numero"], cotacao)
        return 0


def _executar(args: argparse.Namespace, tracker: ProgressTracker) -> dict[str, Any]:
    executable = chromium_executable()
    if not os.access(executable, os.X_OK):
        raise FalhaNaCotacao(f"Chromium não encontrado em {executable} (defina {CHROMIUM_ENV})")
    tracker.update_progress(0, mensagem="Abrindo o navegador")
    with ExitStack() as stack:
        if args.site_url:
            site_url = args.site_url.rstrip("/")
        else:
            site = stack.enter_context(running_quote_site(break_at=args.break_at, break_mode=args.break_mode))
            site_url = site.url
        playwright = stack.enter_context(sync_playwright())
        try:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            raise FalhaNaCotacao(f"O Chromium não abriu: {_primeira_linha(exc)}") from exc
        stack.callback(browser.close)
        page = browser.new_page()
        page.set_default_timeout(args.timeout * 1000)
        return cotar(page, site_url, tracker, pausa_s=args.slow_mo / 1000)


def _parar(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # A scheduler (systemd, Kubernetes, a queue worker) stops a job with SIGTERM: treat it like Ctrl+C, so the
    # session ends as "cancelled" instead of staying "running" until it expires.
    signal.signal(signal.SIGTERM, _parar)
    sys.exit(run_job())


if __name__ == "__main__":
    main()

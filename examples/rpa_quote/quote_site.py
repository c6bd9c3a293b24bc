"""A small, self-contained vehicle-insurance quote site for the RPA example to drive.

Fifteen screens, all generated from the ``TELAS`` table below: each one is a form with a couple of fields and a
"Continuar" button; screen 5 also shows a table of price estimates per insurer and screen 15 shows the final
quote. Prices are a pure function of the answers (``estimativas`` and ``cotacao_final``), so tests can compute
the numbers the bot is expected to scrape.

The site behaves like the real ones the bots face: answers live server-side behind a cookie, a valid form is
answered with ``303`` to the next screen (POST/redirect/GET), an invalid one re-renders the screen with a
message (``422``), and jumping ahead redirects back to the first unanswered screen.

``break_at=N`` breaks screen N on purpose so the failure path can be exercised:

* ``break_mode="error"`` (default): screen N answers ``500`` with an error page;
* ``break_mode="no-button"``: screen N renders without its "Continuar" button (a changed layout).

Run it alone to click through it by hand::

    python -m examples.rpa_quote.quote_site --port 8765 [--break-at 7]
"""

from __future__ import annotations

import argparse
import hashlib
import html
import re
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qs

BreakMode = Literal["error", "no-button"]
BREAK_MODES: tuple[BreakMode, ...] = ("error", "no-button")

# The price table is "valid for" this year; ages are computed against it so that prices do not drift with
# the calendar (the example must be reproducible).
ANO_TABELA = 2025


# --------------------------------------------------------------------------------------------------------
# The screens, as data
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Campo:
    """One form field: a text input, or a ``<select>`` when ``opcoes`` is not empty."""

    nome: str
    rotulo: str
    opcoes: tuple[str, ...] = ()
    formato: str | None = None  # a regex the (stripped) text must match in full
    dica: str = ""  # placeholder

    def validar(self, valor: str) -> str | None:
        """The problem with ``valor``, or None when it is acceptable."""
        if not valor:
            return f"{self.rotulo}: campo obrigatório"
        if self.opcoes and valor not in self.opcoes:
            return f"{self.rotulo}: opção inválida"
        if self.formato and re.fullmatch(self.formato, valor) is None:
            return f"{self.rotulo}: formato inválido"
        if self.nome == "cpf" and not cpf_valido(valor):
            return f"{self.rotulo}: CPF inválido"
        return None


@dataclass(frozen=True)
class Tela:
    numero: int
    titulo: str
    campos: tuple[Campo, ...] = ()


SIM_NAO = ("Sim", "Não")

# Factor of the vehicle's reference value by brand (a stand-in for the FIPE table).
MARCAS: dict[str, float] = {
    "Chevrolet": 1.00,
    "Fiat": 0.92,
    "Honda": 1.12,
    "Hyundai": 1.05,
    "Toyota": 1.18,
    "Volkswagen": 1.03,
}

# Insurer → (price factor, deductible as a fraction of the vehicle's reference value).
SEGURADORAS: dict[str, tuple[float, float]] = {
    "Porto": (1.00, 0.050),
    "Azul": (0.91, 0.060),
    "Allianz": (1.06, 0.045),
    "Tokio Marine": (1.03, 0.050),
    "HDI": (0.95, 0.055),
}

# fmt: off
TELAS: tuple[Tela, ...] = (
    Tela(1, "Dados do segurado", (
        Campo("nome", "Nome completo"),
        Campo("data_nascimento", "Data de nascimento", formato=r"\d{2}/\d{2}/\d{4}", dica="dd/mm/aaaa"),
    )),
    Tela(2, "CPF e contato", (
        Campo("cpf", "CPF", formato=r"\d{3}\.?\d{3}\.?\d{3}-?\d{2}", dica="000.000.000-00"),
        Campo("email", "E-mail", formato=r"[^@\s]+@[^@\s]+\.[^@\s]+"),
    )),
    Tela(3, "Endereço de pernoite", (
        Campo("cep", "CEP", formato=r"\d{5}-?\d{3}", dica="00000-000"),
        Campo("numero", "Número", formato=r"\d{1,6}"),
    )),
    Tela(4, "Veículo", (
        Campo("marca", "Marca", tuple(MARCAS)),
        Campo("modelo", "Modelo"),
        Campo("ano", "Ano do modelo", formato=r"(19[89]\d|20[0-2]\d)"),
    )),
    Tela(5, "Estimativas de preço", (
        Campo("seguradora", "Seguradora escolhida", tuple(SEGURADORAS)),
    )),
    Tela(6, "Placa", (
        Campo("placa", "Placa", formato=r"[A-Z]{3}-?\d[A-Z0-9]\d{2}", dica="ABC1D23"),
        Campo("zero_km", "Veículo zero km?", SIM_NAO),
    )),
    Tela(7, "Uso do veículo", (
        Campo("uso", "Uso", ("Particular", "Aplicativo", "Comercial")),
        Campo("km_mensal", "Quilometragem mensal", ("Até 1.000 km", "1.000 a 2.000 km", "Mais de 2.000 km")),
    )),
    Tela(8, "Condutor principal", (
        Campo("condutor", "Condutor principal", ("O próprio segurado", "Outra pessoa")),
        Campo("idade_condutor", "Idade do condutor", formato=r"(1[89]|[2-9]\d)"),
    )),
    Tela(9, "Garagem", (
        Campo("garagem_casa", "Garagem em casa?", SIM_NAO),
        Campo("garagem_trabalho", "Garagem no trabalho?", ("Sim", "Não", "Não trabalha")),
    )),
    Tela(10, "Coberturas", (
        Campo("cobertura", "Cobertura", ("Compreensiva", "Roubo e furto", "Terceiros")),
        Campo("franquia", "Franquia", ("Reduzida", "Normal", "Majorada")),
    )),
    Tela(11, "Assistência 24h", (
        Campo("guincho", "Guincho", ("200 km", "500 km", "Ilimitado")),
        Campo("carro_reserva", "Carro reserva", ("7 dias", "15 dias", "30 dias")),
    )),
    Tela(12, "Vidros e terceiros", (
        Campo("vidros", "Cobertura de vidros?", SIM_NAO),
        Campo("danos_terceiros", "Danos a terceiros", ("R$ 50.000", "R$ 100.000", "R$ 200.000")),
    )),
    Tela(13, "Histórico", (
        Campo("sinistros", "Sinistros nos últimos 12 meses", ("0", "1", "2 ou mais")),
        Campo("classe_bonus", "Classe de bônus", tuple(str(n) for n in range(11))),
    )),
    Tela(14, "Pagamento", (
        Campo("forma_pagamento", "Forma de pagamento", ("Cartão de crédito", "Boleto", "Débito em conta")),
        Campo("parcelas", "Parcelas", tuple(str(n) for n in range(1, 11))),
    )),
    Tela(15, "Cotação final"),
)
# fmt: on
TOTAL_TELAS = len(TELAS)
assert [t.numero for t in TELAS] == list(range(1, TOTAL_TELAS + 1))

# Multiplicative adjustments applied to the chosen insurer's estimate, by field and answer.
AJUSTES: dict[str, dict[str, float]] = {
    "zero_km": {"Sim": 1.05, "Não": 1.00},
    "uso": {"Particular": 1.00, "Aplicativo": 1.30, "Comercial": 1.20},
    "km_mensal": {"Até 1.000 km": 1.00, "1.000 a 2.000 km": 1.05, "Mais de 2.000 km": 1.12},
    "garagem_casa": {"Sim": 0.92, "Não": 1.00},
    "garagem_trabalho": {"Sim": 0.97, "Não": 1.00, "Não trabalha": 0.95},
    "cobertura": {"Compreensiva": 1.00, "Roubo e furto": 0.55, "Terceiros": 0.35},
    "franquia": {"Reduzida": 1.15, "Normal": 1.00, "Majorada": 0.88},
    "sinistros": {"0": 1.00, "1": 1.15, "2 ou mais": 1.35},
}
# Fixed yearly add-ons in R$, by field and answer.
ADICIONAIS: dict[str, dict[str, float]] = {
    "guincho": {"200 km": 0.0, "500 km": 60.0, "Ilimitado": 120.0},
    "carro_reserva": {"7 dias": 90.0, "15 dias": 150.0, "30 dias": 240.0},
    "vidros": {"Sim": 110.0, "Não": 0.0},
    "danos_terceiros": {"R$ 50.000": 0.0, "R$ 100.000": 80.0, "R$ 200.000": 150.0},
}
FRANQUIA_FATOR = {"Reduzida": 0.5, "Normal": 1.0, "Majorada": 1.5}


# --------------------------------------------------------------------------------------------------------
# Pricing: pure functions of the answers
# --------------------------------------------------------------------------------------------------------


def cpf_valido(cpf: str) -> bool:
    """Checks the two CPF check digits."""
    digitos = [int(c) for c in cpf if c.isdigit()]
    if len(digitos) != 11 or len(set(digitos)) == 1:
        return False
    for n in (9, 10):
        soma = sum(d * peso for d, peso in zip(digitos[:n], range(n + 1, 1, -1), strict=True))
        if (soma * 10) % 11 % 10 != digitos[n]:
            return False
    return True


def _fator_idade(idade: int) -> float:
    if idade < 25:
        return 1.35
    if idade < 30:
        return 1.15
    if idade < 60:
        return 1.00
    return 1.10


def _valor_referencia(respostas: Mapping[str, str]) -> float:
    """The vehicle's reference value: brand factor, 7 % off per year of age."""
    idade_veiculo = max(0, ANO_TABELA - int(respostas["ano"]))
    return 90_000.0 * MARCAS[respostas["marca"]] * 0.93**idade_veiculo


def estimativas(respostas: Mapping[str, str]) -> list[dict[str, float | str]]:
    """Screen 5's table, from the answers of screens 1–4: one row per insurer."""
    valor_veiculo = _valor_referencia(respostas)
    idade = ANO_TABELA - int(respostas["data_nascimento"][-4:])
    # Large metropolitan areas (CEPs starting with 0 for São Paulo, 2 for Rio) cost more.
    fator_regiao = {"0": 1.20, "2": 1.25}.get(respostas["cep"][0], 1.00)
    base = valor_veiculo * 0.045 * _fator_idade(idade) * fator_regiao
    return [
        {
            "seguradora": nome,
            "valor": round(base * fator, 2),
            "franquia": round(valor_veiculo * pct_franquia, -1),
        }
        for nome, (fator, pct_franquia) in SEGURADORAS.items()
    ]


def cotacao_final(respostas: Mapping[str, str]) -> dict[str, str | float | int]:
    """Screen 15: the chosen insurer's estimate adjusted by the answers of screens 6–14."""
    escolhida = next(e for e in estimativas(respostas) if e["seguradora"] == respostas["seguradora"])
    premio = float(escolhida["valor"])
    for nome, tabela in AJUSTES.items():
        premio *= tabela[respostas[nome]]
    if respostas["condutor"] == "Outra pessoa":
        premio *= _fator_idade(int(respostas["idade_condutor"]))
    premio *= 1 - 0.04 * int(respostas["classe_bonus"])  # 4 % bonus discount per claim-free class
    premio += sum(tabela[respostas[nome]] for nome, tabela in ADICIONAIS.items())
    premio = round(premio, 2)
    parcelas = int(respostas["parcelas"])
    # The quote number is a digest of the answers: the same answers always get the same number.
    digest = hashlib.sha256(repr(sorted(respostas.items())).encode()).hexdigest()
    return {
        "numero": f"COT-{digest[:8].upper()}",
        "seguradora": respostas["seguradora"],
        "cobertura": respostas["cobertura"],
        "premio_total": premio,
        "franquia": round(float(escolhida["franquia"]) * FRANQUIA_FATOR[respostas["franquia"]], 2),
        "parcelas": parcelas,
        "valor_parcela": round(premio / parcelas, 2),
        "forma_pagamento": respostas["forma_pagamento"],
    }


def brl(valor: float) -> str:
    """``1234.5`` → ``"R$ 1.234,50"``."""
    return "R$ " + f"{valor:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")


# --------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "header{color:#666;font-size:.9rem}label{display:block;margin:.8rem 0 .2rem}"
    "input,select{font-size:1rem;padding:.3rem;width:100%;box-sizing:border-box}"
    "button{margin-top:1.2rem;font-size:1rem;padding:.5rem 1.5rem}"
    "table{border-collapse:collapse;width:100%;margin:1rem 0}th,td{border-bottom:1px solid #ddd;padding:.4rem}"
    "td+td,th+th{text-align:right}.erro{color:#b00020}"
)


def _documento(titulo: str, corpo: str) -> bytes:
    e = html.escape
    return (
        f'<!doctype html><html lang="pt-BR"><head><meta charset="utf-8"><title>{e(titulo)} — Cotação Auto'
        f"</title><style>{_CSS}</style></head><body><header>Cotação Auto · simulador local</header>{corpo}"
        "</body></html>"
    ).encode()


def _tabela(cabecalho: Sequence[str], linhas: Sequence[Sequence[str]], id_: str) -> str:
    e = html.escape
    th = "".join(f"<th>{e(c)}</th>" for c in cabecalho)
    tr = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in linha) + "</tr>" for linha in linhas)
    return f'<table id="{id_}"><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>'


def _campo_html(campo: Campo, valor: str) -> str:
    e = html.escape
    rotulo = f'<label for="{campo.nome}">{e(campo.rotulo)}</label>'
    if campo.opcoes:
        opcoes = "".join(f"<option{' selected' if o == valor else ''}>{e(o)}</option>" for o in ("", *campo.opcoes))
        return f'{rotulo}<select id="{campo.nome}" name="{campo.nome}">{opcoes}</select>'
    return (
        f'{rotulo}<input id="{campo.nome}" name="{campo.nome}" value="{e(valor)}" '
        f'placeholder="{e(campo.dica)}" autocomplete="off">'
    )


def render_tela(tela: Tela, respostas: Mapping[str, str], erros: Sequence[str] = (), com_botao: bool = True) -> bytes:
    """One screen. ``data-tela`` on ``<main>`` lets a bot tell which screen it is on."""
    e = html.escape
    partes = [f'<main data-tela="{tela.numero}"><h1>{tela.numero}. {e(tela.titulo)}</h1>']
    partes += [f'<p class="erro" data-erro="validacao">{e(m)}</p>' for m in erros]
    if tela.numero == 5:
        tabela_5 = [
            (str(x["seguradora"]), brl(float(x["valor"])), brl(float(x["franquia"]))) for x in estimativas(respostas)
        ]
        partes.append(_tabela(("Seguradora", "Prêmio anual", "Franquia"), tabela_5, "estimativas"))
    if tela.numero == TOTAL_TELAS:
        c = cotacao_final(respostas)
        tabela_15 = [
            ("Número da cotação", str(c["numero"])),
            ("Seguradora", str(c["seguradora"])),
            ("Cobertura", str(c["cobertura"])),
            ("Prêmio total", brl(float(c["premio_total"]))),
            ("Franquia", brl(float(c["franquia"]))),
            ("Parcelas", f"{c['parcelas']}x de {brl(float(c['valor_parcela']))}"),
            ("Forma de pagamento", str(c["forma_pagamento"])),
        ]
        partes.append(_tabela(("Item", "Valor"), tabela_15, "cotacao-final"))
    if tela.campos:
        partes.append(f'<form method="post" action="/tela/{tela.numero}">')
        partes += [_campo_html(c, respostas.get(c.nome, "")) for c in tela.campos]
        if com_botao:
            partes.append('<button type="submit">Continuar</button>')
        partes.append("</form>")
    partes.append("</main>")
    return _documento(tela.titulo, "".join(partes))


def render_erro(status: HTTPStatus, detalhe: str) -> bytes:
    """An error page, as a real site would show it. ``data-erro`` carries the status for bots."""
    e = html.escape
    return _documento(
        "Erro",
        f'<main data-erro="{status.value}"><h1 class="erro">Erro {status.value}</h1><p>{e(detalhe)}</p></main>',
    )


# --------------------------------------------------------------------------------------------------------
# The HTTP server
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Visitante:
    respostas: dict[str, str] = field(default_factory=dict)
    concluidas: int = 0  # the screens 1..concluidas have been answered


@dataclass
class QuoteSite:
    """A running site. ``url`` is its base URL, e.g. ``http://127.0.0.1:40123``."""

    url: str
    server: ThreadingHTTPServer
    thread: threading.Thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _handler(break_at: int | None, break_mode: BreakMode) -> type[BaseHTTPRequestHandler]:
    visitantes: dict[str, _Visitante] = {}
    lock = threading.Lock()  # ThreadingHTTPServer serves each request in its own thread

    class Handler(BaseHTTPRequestHandler):
        server_version = "CotacaoAuto/1.0"
        _cookie: str | None = None  # a new visitor's cookie, to be set on the response

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the bot's output readable

        def do_GET(self) -> None:
            if self.path in ("/", "/tela"):
                self._redirecionar("/tela/1")
                return
            tela = self._tela_do_caminho()
            if tela is None:
                return
            with lock:
                visitante = self._visitante()
                proxima = visitante.concluidas + 1
                respostas = dict(visitante.respostas)
            if tela.numero > proxima:
                self._redirecionar(f"/tela/{proxima}")  # no skipping ahead
                return
            if tela.numero == break_at and break_mode == "error":
                self._responder(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    render_erro(HTTPStatus.INTERNAL_SERVER_ERROR, "Serviço temporariamente indisponível."),
                )
                return
            com_botao = not (tela.numero == break_at and break_mode == "no-button")
            self._responder(HTTPStatus.OK, render_tela(tela, respostas, com_botao=com_botao))

        def do_POST(self) -> None:
            tela = self._tela_do_caminho()
            if tela is None:
                return
            tamanho = int(self.headers.get("Content-Length") or 0)
            formulario = parse_qs(self.rfile.read(tamanho).decode(), keep_blank_values=True)
            valores = {c.nome: formulario.get(c.nome, [""])[0].strip() for c in tela.campos}
            erros = [m for c in tela.campos if (m := c.validar(valores[c.nome])) is not None]
            with lock:
                visitante = self._visitante()
                if tela.numero > visitante.concluidas + 1:
                    erros.append("Responda as telas anteriores primeiro.")
                if not erros:
                    visitante.respostas.update(valores)
                    visitante.concluidas = max(visitante.concluidas, tela.numero)
                respostas = {**visitante.respostas, **valores}
            if erros:
                self._responder(HTTPStatus.UNPROCESSABLE_ENTITY, render_tela(tela, respostas, erros))
            else:
                self._redirecionar(f"/tela/{tela.numero + 1}")

        # -- helpers -----------------------------------------------------------------------------------

        def _tela_do_caminho(self) -> Tela | None:
            match = re.fullmatch(r"/tela/(\d{1,3})", self.path.split("?", 1)[0])
            if match is None or not 1 <= int(match.group(1)) <= TOTAL_TELAS:
                self._responder(HTTPStatus.NOT_FOUND, render_erro(HTTPStatus.NOT_FOUND, "Página não encontrada."))
                return None
            return TELAS[int(match.group(1)) - 1]

        def _visitante(self) -> _Visitante:
            """The caller's state (call with ``lock`` held); a new visitor gets a cookie."""
            cookie = self.headers.get("Cookie", "")
            match = re.search(r"(?:^|;\s*)cotacao=([A-Za-z0-9_-]+)", cookie)
            if match and match.group(1) in visitantes:
                return visitantes[match.group(1)]
            token = secrets.token_urlsafe(16)
            self._cookie = token
            return visitantes.setdefault(token, _Visitante())

        def _cabecalhos_comuns(self) -> None:
            if self._cookie:
                self.send_header("Set-Cookie", f"cotacao={self._cookie}; Path=/; HttpOnly; SameSite=Lax")
            self.send_header("Cache-Control", "no-store")

        def _redirecionar(self, destino: str) -> None:
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", destino)
            self.send_header("Content-Length", "0")
            self._cabecalhos_comuns()
            self.end_headers()

        def _responder(self, status: HTTPStatus, corpo: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(corpo)))
            self._cabecalhos_comuns()
            self.end_headers()
            self.wfile.write(corpo)

    return Handler


def start_quote_site(
    *, host: str = "127.0.0.1", port: int = 0, break_at: int | None = None, break_mode: BreakMode = "error"
) -> QuoteSite:
    """Starts the site in a background thread (``port=0``: a free port) and returns once it accepts."""
    if break_mode not in BREAK_MODES:
        raise ValueError(f"break_mode must be one of {BREAK_MODES}, not {break_mode!r}")
    server = ThreadingHTTPServer((host, port), _handler(break_at, break_mode))
    server.daemon_threads = True
    # The socket is bound and listening once the constructor returns, so the URL is usable right away.
    thread = threading.Thread(target=server.serve_forever, name="quote-site", daemon=True)
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    return QuoteSite(url=f"http://{bound_host!s}:{bound_port}", server=server, thread=thread)


@contextmanager
def running_quote_site(
    *, break_at: int | None = None, break_mode: BreakMode = "error", port: int = 0
) -> Iterator[QuoteSite]:
    site = start_quote_site(port=port, break_at=break_at, break_mode=break_mode)
    try:
        yield site
    finally:
        site.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the sample quote site until Ctrl+C.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--break-at", type=int, metavar="N", help="break screen N on purpose")
    parser.add_argument("--break-mode", choices=BREAK_MODES, default="error")
    args = parser.parse_args(argv)
    site = start_quote_site(host=args.host, port=args.port, break_at=args.break_at, break_mode=args.break_mode)
    print(f"Cotação Auto em {site.url}/ (Ctrl+C para parar)", flush=True)
    try:
        site.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        site.close()


if __name__ == "__main__":
    main()

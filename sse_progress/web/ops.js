/*
 * The ops page (/ops?token=<observe or admin token for *>): every session, live, from the server's stream of
 * session index changes (/ops/events), plus the step-duration and finished-per-hour charts (/ops/figures).
 * No inline code or style (strict CSP); the token travels like the demo page's: ?token= in the page's URL,
 * ?token= on the EventSource (it cannot send headers), a Bearer header on fetch, and on to the session page.
 */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const token = new URLSearchParams(location.search).get("token") || "";
  const FIGURES_EVERY_MS = 10000;
  const ORDER = { stalled: 0, running: 1, pending: 1, error: 2, cancelled: 3, success: 4 };
  const STATE = {
    pending: { text: "Aguardando", icon: "…" },
    running: { text: "Em andamento", icon: "▶" },
    stalled: { text: "Travado", icon: "⚠" },
    success: { text: "Concluído", icon: "✓" },
    error: { text: "Falhou", icon: "✕" },
    cancelled: { text: "Cancelado", icon: "■" },
  };
  const percentFormat = new Intl.NumberFormat("pt-BR", { maximumFractionDigits: 1 });
  const seconds = new Intl.NumberFormat("pt-BR", { maximumFractionDigits: 1 });
  const hourFormat = new Intl.DateTimeFormat("pt-BR", { hour: "2-digit", minute: "2-digit" });

  const sessions = new Map(); // session_id → { record, receivedAt, row }
  let stallRule = null;

  function duration(totalSeconds) {
    if (totalSeconds == null || !isFinite(totalSeconds)) return "–";
    const s = Math.max(0, Math.round(totalSeconds));
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  function setConnection(state, text) {
    $("connection").dataset.state = state;
    $("connection-text").textContent = text;
  }

  function showNotice(text) {
    $("notice").textContent = text;
    $("notice").hidden = !text;
  }

  function withToken(path) {
    return token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path;
  }

  // ---- the table ----

  function age(entry) {
    return entry.record.last_event_age_s + (Date.now() - entry.receivedAt) / 1000;
  }

  function cell(row, index) {
    return row.children[index];
  }

  function makeRow(sessionId) {
    const row = document.createElement("tr");
    row.dataset.session = sessionId;
    for (let i = 0; i < 6; i++) row.appendChild(document.createElement("td"));
    const badge = document.createElement("span");
    badge.className = "badge";
    const icon = document.createElement("span");
    icon.className = "badge-icon";
    icon.setAttribute("aria-hidden", "true");
    const label = document.createElement("span");
    badge.append(icon, label);
    cell(row, 0).appendChild(badge);
    const link = document.createElement("a");
    link.href = "/?session=" + encodeURIComponent(sessionId) + (token ? "&token=" + encodeURIComponent(token) : "");
    link.textContent = sessionId;
    link.title = sessionId; // shown whole on hover when the cell cuts it short
    cell(row, 1).appendChild(link);
    const step = document.createElement("span");
    step.className = "step";
    const message = document.createElement("span");
    message.className = "message";
    cell(row, 2).append(step, message);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    bar.appendChild(fill);
    const percent = document.createElement("span");
    percent.className = "percent";
    cell(row, 3).append(bar, percent);
    return row;
  }

  function fillRow(entry) {
    const { record, row } = entry;
    const snap = record.snapshot;
    const state = record.state;
    row.dataset.state = state;
    const badge = cell(row, 0).firstChild;
    badge.firstChild.textContent = STATE[state] ? STATE[state].icon : "?";
    badge.lastChild.textContent = STATE[state] ? STATE[state].text : state;
    cell(row, 1).firstChild.setAttribute("aria-label", "Sessão " + record.session_id + ": abrir o acompanhamento");
    const step = cell(row, 2).firstChild;
    const message = cell(row, 2).lastChild;
    step.textContent =
      state === "error"
        ? "Falhou na etapa " + snap.etapa_atual + " de " + snap.total_etapas + ": "
        : "Etapa " + snap.etapa_atual + " de " + snap.total_etapas + ": ";
    message.textContent = snap.mensagem || "–";
    const bar = cell(row, 3).firstChild;
    const percent = percentFormat.format(snap.percentual) + "%";
    bar.setAttribute("aria-valuenow", String(snap.percentual));
    bar.setAttribute("aria-valuetext", percent);
    bar.setAttribute("aria-label", "Progresso de " + record.session_id);
    bar.firstChild.style.width = snap.percentual + "%"; // CSSOM: allowed under style-src 'self'
    cell(row, 3).lastChild.textContent = percent;
    tickRow(entry);
  }

  function tickRow(entry) {
    const { record, row } = entry;
    const state = record.state;
    const since = age(entry);
    let eta = "–";
    if (state === "running" || state === "pending") {
      const left = record.snapshot.eta_seconds;
      eta = left == null ? "calculando…" : duration(Math.max(0, left - since));
    }
    cell(row, 4).textContent = eta;
    cell(row, 5).textContent =
      "há " + duration(since) + (state === "stalled" ? " (limite " + duration(record.stall_after_s) + ")" : "");
  }

  function sortedEntries() {
    return [...sessions.values()].sort((a, b) => {
      const byState = (ORDER[a.record.state] ?? 5) - (ORDER[b.record.state] ?? 5);
      if (byState !== 0) return byState;
      return b.record.snapshot.id.localeCompare(a.record.snapshot.id, "en", { numeric: true });
    });
  }

  function render() {
    const body = $("sessions-body");
    const entries = sortedEntries();
    entries.forEach((entry, index) => {
      if (body.children[index] !== entry.row) body.insertBefore(entry.row, body.children[index] || null);
    });
    $("sessions-empty").hidden = entries.length > 0;
    const counts = { running: 0, stalled: 0, error: 0, success: 0 };
    for (const entry of entries) {
      const state = entry.record.state === "pending" ? "running" : entry.record.state;
      if (state in counts) counts[state] += 1;
    }
    for (const [state, count] of Object.entries(counts)) $("count-" + state).textContent = String(count);
  }

  function onRecord(record) {
    let entry = sessions.get(record.session_id);
    if (!entry) {
      entry = { row: makeRow(record.session_id) };
      sessions.set(record.session_id, entry);
    }
    entry.record = record;
    entry.receivedAt = Date.now();
    fillRow(entry);
  }

  // ---- the stream ----

  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      render();
    });
  }

  function connect() {
    const source = new EventSource(withToken("/ops/events"));
    source.addEventListener("open", () => {
      setConnection("streaming", "Ao vivo");
      showNotice("");
    });
    source.addEventListener("session", (event) => {
      onRecord(JSON.parse(event.data));
      scheduleRender();
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setConnection("error", "Sem conexão");
        checkAccess();
      } else {
        setConnection("reconnecting", "Reconectando…");
      }
    });
  }

  async function checkAccess() {
    const response = await fetchJson("/ops/figures");
    if (response) setTimeout(connect, 3000); // the stream was refused for a passing reason: try again
  }

  // ---- the charts ----

  async function fetchJson(path) {
    try {
      const response = await fetch(path, { headers: token ? { Authorization: "Bearer " + token } : {} });
      if (response.status === 401 || response.status === 403) {
        const body = await response.json().catch(() => ({}));
        showNotice(
          "Acesso recusado (" + (body.error || response.status) + "). Abra a página com um token de observação: " +
            "/ops?token=<token>, gerado por sse-progress token '*' --observe."
        );
        return null;
      }
      if (!response.ok) return null;
      return await response.json();
    } catch (error) {
      return null;
    }
  }

  function svg(tag, attributes, parent) {
    const element = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
    if (parent) parent.appendChild(element);
    return element;
  }

  function chartFrame(container, width, height, label) {
    container.replaceChildren();
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": label });
    container.appendChild(root);
    return root;
  }

  function drawSteps(steps) {
    const container = $("steps-chart");
    const tableBody = $("steps-table").tBodies[0];
    tableBody.replaceChildren();
    if (!steps.length) {
      container.textContent = "Sem etapas concluídas ainda.";
      return;
    }
    // The highest median (what a step usually takes); a tie goes to the higher p95, then to the earlier step.
    // Not p95 first: over a few sessions one stalled job would own it.
    const slower = (a, b) => b.median_s > a.median_s || (b.median_s === a.median_s && b.p95_s > a.p95_s);
    const slowest = steps.reduce((a, b) => (slower(a, b) ? b : a));
    const top = Math.max(...steps.map((s) => s.p95_s), 0.001);
    const width = 960, height = 220, left = 48, bottom = 28, plot = height - bottom - 10;
    const slot = (width - left) / steps.length;
    const root = chartFrame(
      container, width, height,
      "Duração por etapa. Etapa mais lenta: " + slowest.step + ", mediana " + seconds.format(slowest.median_s) + " s."
    );
    svg("line", { x1: left, y1: 10 + plot, x2: width, y2: 10 + plot, class: "axis" }, root);
    const topLabel = svg("text", { x: left - 6, y: 16, class: "tick", "text-anchor": "end" }, root);
    topLabel.textContent = seconds.format(top) + " s";
    steps.forEach((step, index) => {
      const x = left + index * slot;
      const barWidth = Math.max(2, slot * 0.35);
      const group = svg("g", { class: "step-bars" + (step === slowest ? " slowest" : ""), "data-step": step.step }, root);
      const medianHeight = (step.median_s / top) * plot;
      const p95Height = (step.p95_s / top) * plot;
      svg("rect", { x: x + slot * 0.12, y: 10 + plot - medianHeight, width: barWidth, height: medianHeight, class: "median" }, group);
      svg("rect", { x: x + slot * 0.12 + barWidth, y: 10 + plot - p95Height, width: barWidth, height: p95Height, class: "p95" }, group);
      const label = svg("text", { x: x + slot / 2, y: height - 10, class: "tick", "text-anchor": "middle" }, root);
      label.textContent = String(step.step);
      const row = tableBody.insertRow();
      row.insertCell().textContent = String(step.step) + (step === slowest ? " (mais lenta)" : "");
      row.insertCell().textContent = seconds.format(step.median_s);
      row.insertCell().textContent = seconds.format(step.p95_s);
    });
    container.dataset.slowest = String(slowest.step);
  }

  function drawFinished(finished) {
    const container = $("finished-chart");
    const tableBody = $("finished-table").tBodies[0];
    tableBody.replaceChildren();
    const hours = finished.hours;
    const kinds = ["success", "error", "cancelled"];
    const totals = hours.map((_, i) => kinds.reduce((sum, kind) => sum + finished[kind][i], 0));
    const top = Math.max(1, ...totals);
    const width = 960, height = 180, left = 30, bottom = 28, plot = height - bottom - 10;
    const slot = (width - left) / hours.length;
    const root = chartFrame(
      container, width, height,
      "Finalizados por hora nas últimas " + hours.length + " horas: " + totals.reduce((a, b) => a + b, 0) + " no total."
    );
    svg("line", { x1: left, y1: 10 + plot, x2: width, y2: 10 + plot, class: "axis" }, root);
    hours.forEach((start, i) => {
      let base = 10 + plot;
      for (const kind of kinds) {
        const h = (finished[kind][i] / top) * plot;
        svg("rect", { x: left + i * slot + slot * 0.15, y: base - h, width: slot * 0.7, height: h, class: kind }, root);
        base -= h;
      }
      const label = svg("text", { x: left + i * slot + slot / 2, y: height - 10, class: "tick", "text-anchor": "middle" }, root);
      label.textContent = hourFormat.format(new Date(start));
      const row = tableBody.insertRow();
      row.insertCell().textContent = hourFormat.format(new Date(start));
      for (const kind of kinds) row.insertCell().textContent = String(finished[kind][i]);
    });
  }

  async function refreshFigures() {
    const figures = await fetchJson("/ops/figures?hours=6");
    if (figures) {
      stallRule = figures;
      $("stall-rule").textContent =
        "o maior entre " + duration(figures.stall_after_s) + " e " + seconds.format(figures.stall_factor) +
        " × a mediana das etapas da sessão";
      drawSteps(figures.steps);
      drawFinished(figures.finished);
    }
  }

  // Ages and ETAs move every second without any event.
  setInterval(() => {
    for (const entry of sessions.values()) tickRow(entry);
  }, 1000);
  setInterval(refreshFigures, FIGURES_EVERY_MS);
  refreshFigures();
  connect();
  window.__ops = { sessions, refreshFigures, stallRule: () => stallRule };
})();

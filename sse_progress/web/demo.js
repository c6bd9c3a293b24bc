/*
 * The demo page: follows the session named in the URL (/?session=<sid>&token=<token>[&transport=auto|sse|ws|poll])
 * with ProgressClient and renders it. Loaded after progress-client.js (both deferred), no inline code (strict CSP).
 */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const sessionId = params.get("session");
  const token = params.get("token") || "";
  const transport = params.get("transport") || "auto";

  // The page's texts and locale live in index.html (#demo-text), beside its markup: one file to translate.
  const TEXT = JSON.parse($("demo-text").textContent);
  const fill = (template, values) => template.replace(/\{(\w+)\}/g, (_, name) => String(values[name]));

  const money = new Intl.NumberFormat(TEXT.locale, { style: "currency", currency: TEXT.currency });
  const number = new Intl.NumberFormat(TEXT.locale, { maximumFractionDigits: 2 });
  const oneDecimal = new Intl.NumberFormat(TEXT.locale, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const percentFormat = new Intl.NumberFormat(TEXT.locale, { maximumFractionDigits: 1 });
  const clock = new Intl.DateTimeFormat(TEXT.locale, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  // Numbers under these keys are amounts of money (valor, valor_parcela, franquia, premio_total, …).
  const MONEY_KEY = /valor|franquia|pr[eê]mio|pre[cç]o|total|price|amount/i;

  const RESULT_ICON = { success: "✓", error: "✕", cancelled: "■" };

  if (!sessionId) {
    $("intro").hidden = false;
    setConnection("idle");
    return;
  }

  $("tracker").hidden = false;
  $("session-id").textContent = sessionId;

  let client;
  try {
    // "0": replay the retained history first, so that the list of steps is complete even when the page is
    // opened (or reloaded) in the middle of the job.
    client = new window.ProgressClient({ sessionId, token, transport, lastEventId: "0" });
  } catch (error) {
    showNotice(fill(TEXT.invalidAddress, { error: error.message }));
    setConnection("error");
    return;
  }

  let wasOpen = false;
  let finished = false;
  const stepItems = new Map(); // etapa_atual → <li>

  client.on("state", (state) => {
    if (state === "open" || state === "polling") wasOpen = true;
    if (state === "open") setConnection("streaming");
    else if (state === "polling") setConnection("polling");
    else if (state === "connecting") setConnection(wasOpen ? "reconnecting" : "connecting");
    else if (state === "closed" && !finished) setConnection("error");
  });
  client.on("transport", ({ transport: name }) => {
    $("transport").textContent = TEXT.transport[name] || name;
  });
  client.on("snapshot", render);
  client.on("progress_update", render);
  client.on("reset", (envelope) => {
    // The server could not resume where we were: the envelope replaces our state. Steps beyond it are stale.
    for (const [step, item] of stepItems) {
      if (step > envelope.etapa_atual) {
        item.remove();
        stepItems.delete(step);
      }
    }
    render(envelope);
  });
  client.on("end", (envelope) => {
    finished = true;
    setConnection("done");
    if (envelope) showResult(envelope);
  });
  client.on("error", ({ message }) => {
    setConnection("error");
    showNotice(fill(TEXT.cannotFollow, { error: message }));
  });

  function render(e) {
    const pct = clampPercent(e.percentual);
    const pctText = percentFormat.format(pct) + "%";
    $("percent").textContent = pctText;
    const bar = $("progressbar");
    bar.setAttribute("aria-valuenow", String(pct));
    bar.setAttribute(
      "aria-valuetext",
      fill(TEXT.progressValueText, { percent: pctText, step: e.etapa_atual, total: e.total_etapas }),
    );
    bar.dataset.status = e.status;
    // CSSOM, not a style attribute: allowed by the page's style-src 'self'.
    $("progressbar-fill").style.width = pct + "%";
    document.title = pctText + " · " + TEXT.title;

    $("step").textContent = e.etapa_atual + "/" + e.total_etapas;
    $("message").textContent = e.mensagem || "–";
    $("eta").textContent = formatEta(e.eta_seconds, e.status);

    addStep(e);
    const extra = e.dados_extra;
    if (extra && Array.isArray(extra.estimativas_tela_5)) renderEstimates(extra.estimativas_tela_5);
    if (extra && extra.cotacao_final && typeof extra.cotacao_final === "object") renderFinalQuote(extra.cotacao_final);
  }

  function renderFinalQuote(quote) {
    const list = document.createDocumentFragment();
    for (const [key, value] of Object.entries(quote)) {
      const item = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = humanize(key);
      dd.textContent = formatCell(key, value);
      item.append(dt, dd);
      list.append(item);
    }
    $("final-quote").replaceChildren(list);
    $("final-quote-card").hidden = false;
  }

  function addStep(e) {
    const step = e.etapa_atual;
    let item = stepItems.get(step);
    if (!item) {
      item = document.createElement("li");
      item.dataset.step = String(step);
      item.innerHTML =
        '<span class="step-number"></span><span class="step-text"></span>' +
        '<time class="step-time"></time><span class="step-duration"></span>';
      // Keep the list ordered by step even if a reset or a late snapshot arrives out of order.
      const next = [...stepItems.keys()].filter((s) => s > step).sort((a, b) => a - b)[0];
      $("steps").insertBefore(item, next === undefined ? null : stepItems.get(next));
      stepItems.set(step, item);
      $("steps-empty").hidden = true;
      item.querySelector(".step-number").textContent = String(step);
      const started = new Date(e.timestamp);
      if (!Number.isNaN(started.getTime())) {
        const time = item.querySelector(".step-time");
        time.dateTime = e.timestamp;
        time.textContent = clock.format(started);
        item.dataset.started = String(started.getTime());
      }
      // The previous step ended when this one started: show how long it took.
      const previous = stepItems.get([...stepItems.keys()].filter((s) => s < step).sort((a, b) => b - a)[0]);
      if (previous && previous.dataset.started && item.dataset.started && !previous.dataset.duration) {
        setDuration(previous, (Number(item.dataset.started) - Number(previous.dataset.started)) / 1000);
      }
    }
    const terminal = e.status === "success" || e.status === "error" || e.status === "cancelled";
    const text = item.querySelector(".step-text");
    // A step's later messages replace its text, but the terminal message goes to the banner: the step keeps
    // saying what it was, and shows how long it took.
    if (!terminal || !text.textContent) text.textContent = e.mensagem || fill(TEXT.stepWithoutMessage, { step });
    if (terminal && item.dataset.started && !item.dataset.duration) {
      const seconds = (new Date(e.timestamp).getTime() - Number(item.dataset.started)) / 1000;
      if (Number.isFinite(seconds)) setDuration(item, seconds);
    }
    item.dataset.status = e.status;
    for (const other of stepItems.values()) other.classList.toggle("current", other === item);
  }

  function setDuration(item, seconds) {
    item.dataset.duration = String(seconds);
    const el = item.querySelector(".step-duration");
    el.textContent = fill(TEXT.stepDuration, { duration: formatDuration(seconds) });
  }

  function renderEstimates(rows) {
    const objects = rows.filter((row) => row && typeof row === "object" && !Array.isArray(row));
    if (objects.length === 0) return;
    // Columns: every key present, in order of first appearance.
    const columns = [];
    for (const row of objects) for (const key of Object.keys(row)) if (!columns.includes(key)) columns.push(key);

    const table = $("estimates");
    const headRow = document.createElement("tr");
    for (const key of columns) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = humanize(key);
      if (objects.some((row) => typeof row[key] === "number")) th.className = "num";
      headRow.append(th);
    }
    table.tHead.replaceChildren(headRow);

    const body = document.createDocumentFragment();
    for (const row of objects) {
      const tr = document.createElement("tr");
      for (const key of columns) {
        const td = document.createElement("td");
        const value = row[key];
        td.textContent = formatCell(key, value);
        if (typeof value === "number") td.className = "num";
        tr.append(td);
      }
      body.append(tr);
    }
    table.tBodies[0].replaceChildren(body);
    $("estimates-card").hidden = false;
  }

  function showResult(e) {
    const kind = RESULT_ICON[e.status] ? e.status : "error";
    const result = $("result");
    result.dataset.state = kind;
    result.setAttribute("role", kind === "success" ? "status" : "alert");
    result.querySelector(".result-icon").textContent = RESULT_ICON[kind];
    $("result-title").textContent = TEXT.result[kind];
    $("result-message").textContent = e.mensagem || "";
    result.hidden = false;
    document.body.dataset.state = kind;
    document.title = TEXT.result[kind] + " · " + TEXT.title;
  }

  function showNotice(text) {
    const notice = $("notice");
    notice.textContent = text;
    notice.hidden = false;
  }

  function setConnection(state) {
    const el = $("connection");
    el.dataset.state = state;
    $("connection-text").textContent = TEXT.connection[state];
  }

  function clampPercent(value) {
    const n = Number(value);
    return Number.isFinite(n) ? Math.min(100, Math.max(0, n)) : 0;
  }

  function formatEta(seconds, status) {
    if (status === "success" || status === "error" || status === "cancelled") return "—";
    if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return TEXT.etaUnknown;
    return fill(TEXT.etaApproximately, { duration: formatDuration(Number(seconds)) });
  }

  function formatDuration(seconds) {
    if (seconds < 10) return oneDecimal.format(Math.max(0, seconds)) + " s";
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const rest = s % 60;
    if (h > 0) return h + " h " + String(m).padStart(2, "0") + " min";
    return m + " min " + String(rest).padStart(2, "0") + " s";
  }

  // Labels for the keys the quote jobs use (TEXT.labels); any other key is shown as written, underscores as spaces.
  function humanize(key) {
    if (Object.prototype.hasOwnProperty.call(TEXT.labels, key)) return TEXT.labels[key];
    const text = String(key).replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function formatCell(key, value) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "number") return MONEY_KEY.test(key) ? money.format(value) : number.format(value);
    if (typeof value === "boolean") return value ? TEXT.yes : TEXT.no;
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }
})();

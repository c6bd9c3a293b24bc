/*
 * sse-progress browser client — follows one session of the protocol in docs/protocol.md.
 *
 * A classic script (no build step, no dependencies): loading it with <script src> sets
 * `window.ProgressClient`; ES modules import it through progress-client.mjs, which re-exports the same class.
 *
 *   const c = new ProgressClient({ sessionId: "abc123", token: "…" });
 *   c.on("progress_update", (e) => …);   // also "snapshot", "reset" (the frame kinds of §3)
 *   c.on("end", (e) => …);               // the terminal envelope; the client has closed itself
 *   c.on("state", (s) => …);             // "connecting" | "open" | "polling" | "closed"
 *
 * Guarantees: a handler never sees the same event id twice, across reconnects and transport switches (ids are
 * compared as (ms, seq) integer pairs, a `reset` frame is always delivered); after the terminal event nothing
 * reconnects.
 */
(function (root) {
  "use strict";

  const FRAME_KINDS = ["progress_update", "snapshot", "reset"];
  const TERMINAL_STATUSES = new Set(["success", "error", "cancelled"]);
  const TRANSPORTS = new Set(["auto", "sse", "ws", "poll"]);
  const SESSION_ID = /^[A-Za-z0-9_-]{1,64}$/;
  const EVENT_ID = /^(\d{1,20})(?:-(\d{1,20}))?$/;

  const DEFAULTS = {
    baseUrl: "",
    token: "",
    transport: "auto",
    // Resume id for the first connection: omit it to start from the latest state (a `snapshot` frame),
    // "0" to replay the whole retained history, or an id saved from an earlier run.
    lastEventId: null,
    // auto: how long a streaming connection may stay silent before we suspect a buffering proxy.
    stallTimeout: 4000,
    // auto: streams accepted and then lost without any event, in a row, before falling back to polling.
    maxErrors: 3,
    // Reconnect backoff of our own (WebSocket, and EventSource after the browser gave up): base and cap.
    backoffBase: 500,
    backoffMax: 15000,
    // WebSocket: interval of the application-level ping that keeps idle proxies from closing the socket.
    wsPingInterval: 25000,
    withCredentials: false,
    debug: false,
  };

  /** "1732530000000-3" → [1732530000000, 3]; "5" → [5, 0]; anything else → null. */
  function parseEventId(text) {
    if (typeof text !== "string") return null;
    const match = EVENT_ID.exec(text);
    if (match === null) return null;
    const ms = Number(match[1]);
    const seq = Number(match[2] || 0);
    // Redis ids fit in doubles (ms < 2^53); refuse anything that would silently lose precision.
    if (!Number.isSafeInteger(ms) || !Number.isSafeInteger(seq)) return null;
    return [ms, seq];
  }

  /** Compares two ids (strings or parsed pairs) numerically: negative, 0 or positive. */
  function compareEventIds(a, b) {
    const x = Array.isArray(a) ? a : parseEventId(a);
    const y = Array.isArray(b) ? b : parseEventId(b);
    if (x === null || y === null) throw new TypeError("not an event id: " + (x === null ? a : b));
    return x[0] !== y[0] ? x[0] - y[0] : x[1] - y[1];
  }

  /**
   * Parses a complete text/event-stream body (poll mode over fetch) into
   * { events: [{ id, event, data }], retry } following the HTML event-stream interpretation rules.
   */
  function parseEventStream(text) {
    const events = [];
    let retry = null;
    let id = null;
    let event = "";
    let data = [];
    if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    for (const line of text.split(/\r\n|\r|\n/)) {
      if (line === "") {
        if (data.length > 0) events.push({ id, event: event || "message", data: data.join("\n") });
        event = "";
        data = [];
        continue;
      }
      if (line[0] === ":") continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") event = value;
      else if (field === "id" && !value.includes("\0")) id = value;
      else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
    }
    // A trailing block without its blank line is incomplete and, like EventSource does, ignored.
    return { events, retry };
  }

  function reportError(error) {
    // A throwing handler must not break the client, but must not be swallowed either.
    if (typeof root.reportError === "function") root.reportError(error);
    else setTimeout(() => { throw error; }, 0);
  }

  class ProgressClient {
    /**
     * @param {object} options
     * @param {string} options.sessionId  the session to follow (required)
     * @param {string} [options.token]    a subscribe token, sent as ?token= (omit it to rely on the cookie)
     * @param {string} [options.baseUrl]  the server's origin (and path prefix); "" for the page's own origin
     * @param {"auto"|"sse"|"ws"|"poll"} [options.transport]
     * @param {string} [options.lastEventId]  resume id for the first connection ("0" replays the history)
     */
    constructor(options = {}) {
      const opts = { ...DEFAULTS };
      for (const [key, value] of Object.entries(options)) if (value !== undefined) opts[key] = value;
      if (typeof opts.sessionId !== "string" || !SESSION_ID.test(opts.sessionId)) {
        throw new TypeError("ProgressClient: sessionId must match " + SESSION_ID);
      }
      if (!TRANSPORTS.has(opts.transport)) {
        throw new TypeError("ProgressClient: transport must be one of auto, sse, ws, poll");
      }
      if (opts.lastEventId !== null && opts.lastEventId !== undefined && opts.lastEventId !== "earliest" &&
          parseEventId(String(opts.lastEventId)) === null) {
        throw new TypeError("ProgressClient: lastEventId is not an event id: " + opts.lastEventId);
      }
      this._opts = opts;
      this._baseUrl = String(opts.baseUrl || "").replace(/\/+$/, "");
      this._handlers = new Map();
      this._state = null;        // emitted as "connecting" when the first connection starts
      this._transport = null;    // the transport in use: "sse" | "poll" | "ws"
      this._done = false;        // closed for good (terminal event, fatal error or close())
      this._lastId = null;       // text of the last delivered id, as the server wrote it
      this._lastKey = null;      // the same, parsed to [ms, seq]
      this._resumeFrom = null;   // resume id for the next connection when nothing was delivered yet
      this._conn = null;         // the current connection: { close() }
      this._generation = 0;      // bumped on every connection change; stale callbacks compare against it
      this._attempt = 0;         // consecutive reconnect attempts of our own (backoff exponent)
      this._retryTimer = null;

      if (opts.lastEventId !== null && opts.lastEventId !== undefined) {
        const text = String(opts.lastEventId);
        if (text === "earliest" || text === "0") {
          this._resumeFrom = text;
        } else {
          this._lastId = text;
          this._lastKey = parseEventId(text);
        }
      }
      // Start on a microtask so that handlers registered right after `new` see the first "state".
      queueMicrotask(() => { if (!this._done) this._start(); });
    }

    /** The id of the last event delivered to the handlers (null before the first). */
    get lastEventId() { return this._lastId; }
    /** The transport currently in use: "sse", "poll" or "ws" (null before the first connection). */
    get transport() { return this._transport; }
    /** "connecting" | "open" | "polling" | "closed". */
    get state() { return this._state || "connecting"; }
    get sessionId() { return this._opts.sessionId; }

    /**
     * Registers a handler; returns a function that removes it. Events: "progress_update", "snapshot", "reset"
     * (the envelope), "end" (the terminal envelope), "state" (the new state), "transport" ({transport, reason})
     * and "error" ({status, message}: fatal, e.g. a refused token; the client has closed; status is the HTTP
     * status, null for a WebSocket refusal).
     */
    on(type, handler) {
      if (typeof handler !== "function") throw new TypeError("ProgressClient.on: handler must be a function");
      if (!this._handlers.has(type)) this._handlers.set(type, new Set());
      this._handlers.get(type).add(handler);
      return () => this.off(type, handler);
    }

    off(type, handler) {
      const set = this._handlers.get(type);
      if (set) set.delete(handler);
    }

    /** Stops following the session. Idempotent; no "end" is emitted. */
    close() {
      if (this._done) return;
      this._done = true;
      this._teardown();
      this._setState("closed");
    }

    // ---------------------------------------------------------------- plumbing

    _emit(type, payload) {
      const set = this._handlers.get(type);
      if (!set) return;
      for (const handler of Array.from(set)) {
        try {
          handler(payload);
        } catch (error) {
          reportError(error);
        }
      }
    }

    _setState(state) {
      if (this._state === state) return;
      this._state = state;
      this._debug("state", state);
      this._emit("state", state);
    }

    _debug(...args) {
      if (this._opts.debug) console.debug("[ProgressClient]", this._opts.sessionId, ...args);
    }

    _query(extra) {
      const params = [];
      if (this._opts.token) params.push("token=" + encodeURIComponent(this._opts.token));
      for (const [key, value] of Object.entries(extra)) {
        if (value !== null && value !== undefined) params.push(key + "=" + encodeURIComponent(value));
      }
      return params.length ? "?" + params.join("&") : "";
    }

    /** Resume id for a brand-new connection: the last delivered id, else the initial one (if any). */
    _resumeId() {
      return this._lastId !== null ? this._lastId : this._resumeFrom;
    }

    /**
     * A connection ended without delivering anything while we had no id: the session had no events when we
     * looked, so every event it gets from now on is new to us. Without this, the next request (carrying no
     * resume id) would get a `snapshot` and skip the events published in between.
     */
    _sawEmptySession() {
      if (this._lastId === null && this._resumeFrom === null) {
        this._resumeFrom = "0";
        return true;
      }
      return false;
    }

    _eventsUrl(poll) {
      const path = "/sessions/" + encodeURIComponent(this._opts.sessionId) + "/events";
      return this._baseUrl + path + this._query({ mode: poll ? "poll" : null, last_event_id: this._resumeId() });
    }

    _snapshotUrl() {
      return this._baseUrl + "/sessions/" + encodeURIComponent(this._opts.sessionId) + this._query({});
    }

    _wsUrl() {
      const base = new URL(this._baseUrl || "/", root.location ? root.location.href : undefined);
      const scheme = base.protocol === "https:" ? "wss:" : "ws:";
      const prefix = base.pathname.replace(/\/+$/, "");
      return scheme + "//" + base.host + prefix + "/ws/sessions/" + encodeURIComponent(this._opts.sessionId) +
        this._query({ last_event_id: this._resumeId() });
    }

    _fetchInit() {
      return {
        cache: "no-store",
        credentials: this._opts.withCredentials ? "include" : "same-origin",
        headers: { Accept: "text/event-stream" },
      };
    }

    /** Closes the current connection and cancels pending timers; later callbacks from it are ignored. */
    _teardown() {
      this._generation += 1;
      if (this._retryTimer !== null) {
        clearTimeout(this._retryTimer);
        this._retryTimer = null;
      }
      if (this._conn !== null) {
        const conn = this._conn;
        this._conn = null;
        conn.close();
      }
    }

    /** Returns a predicate telling whether a callback still belongs to the current connection. */
    _guard() {
      const generation = this._generation;
      return () => generation === this._generation && !this._done;
    }

    _backoffDelay() {
      const exp = Math.min(this._attempt, 10);
      this._attempt += 1;
      const delay = Math.min(this._opts.backoffMax, this._opts.backoffBase * 2 ** exp);
      // Jitter (±25 %) spreads a crowd of clients reconnecting after a server restart.
      return Math.round(delay * (0.75 + Math.random() * 0.5));
    }

    _setTransport(transport, reason) {
      if (this._transport === transport) return;
      this._transport = transport;
      this._debug("transport", transport, reason);
      this._emit("transport", { transport, reason });
    }

    // ---------------------------------------------------------------- frames

    /**
     * Delivers one frame to the handlers unless it was already delivered. Returns true when the frame was
     * terminal (the client is then closed).
     */
    _deliver(kind, envelope, idText) {
      if (this._done) return true;
      if (envelope === null || typeof envelope !== "object") return false;
      const text = typeof envelope.id === "string" ? envelope.id : idText;
      const key = parseEventId(text);
      if (kind !== "reset" && key !== null && this._lastKey !== null && compareEventIds(key, this._lastKey) <= 0) {
        return false; // seen already (replayed after a reconnect or a transport switch)
      }
      if (key !== null) {
        this._lastId = text;
        this._lastKey = key;
      }
      this._attempt = 0;
      const terminal = TERMINAL_STATUSES.has(envelope.status);
      if (terminal) {
        // Close first so that nothing (a queued frame, a browser reconnect) can follow the terminal event.
        this._done = true;
        this._teardown();
      }
      this._emit(kind, envelope);
      if (terminal) {
        this._emit("end", envelope);
        this._setState("closed");
      }
      return terminal;
    }

    _deliverText(kind, data, idText) {
      let envelope;
      try {
        envelope = JSON.parse(data);
      } catch (error) {
        this._debug("ignoring a frame that is not JSON", error);
        return false;
      }
      return this._deliver(kind, envelope, idText);
    }

    /** The session is over but we hold no terminal envelope (resumed at/after it: 204). */
    async _finishAfter204() {
      const alive = this._guard();
      let envelope = null;
      try {
        const response = await fetch(this._snapshotUrl(), { cache: "no-store", credentials: this._fetchInit().credentials });
        if (response.ok) envelope = (await response.json()).data || null;
      } catch (error) {
        this._debug("snapshot after 204 failed", error);
      }
      if (!alive()) return;
      this._done = true;
      this._teardown();
      this._emit("end", envelope);
      this._setState("closed");
    }

    _fail(status, message) {
      if (this._done) return;
      this._done = true;
      this._teardown();
      this._emit("error", { status, message });
      this._setState("closed");
    }

    // ---------------------------------------------------------------- transports

    _start() {
      const wanted = this._opts.transport;
      const hasEventSource = typeof root.EventSource === "function";
      const hasWebSocket = typeof root.WebSocket === "function";
      if (wanted === "ws" && hasWebSocket) this._openWebSocket();
      else if ((wanted === "auto" || wanted === "sse") && hasEventSource) this._openEventSource(false);
      else if (hasEventSource) this._openEventSource(true);
      // No EventSource (or no WebSocket for "ws"): poll with fetch() and parse the stream ourselves.
      else this._fetchPoll();
    }

    /**
     * One EventSource, streaming (poll=false) or in poll mode (poll=true). In poll mode the server ends every
     * response and the browser's reconnect (after the `retry:` delay, carrying Last-Event-ID) is the poll loop.
     */
    _openEventSource(poll, keepState = false) {
      this._teardown();
      const alive = this._guard();
      const auto = this._opts.transport === "auto";
      const stall = this._opts.stallTimeout;
      this._setTransport(poll ? "poll" : "sse", poll ? "poll mode" : "streaming");
      if (!keepState) this._setState("connecting");

      const es = new root.EventSource(this._eventsUrl(poll), { withCredentials: this._opts.withCredentials });
      const timers = new Set();
      const later = (fn, ms) => {
        const t = setTimeout(() => { timers.delete(t); if (alive()) fn(); }, ms);
        timers.add(t);
        return t;
      };
      const cancel = (t) => { if (t !== null) { clearTimeout(t); timers.delete(t); } };
      this._conn = { close() { es.close(); for (const t of timers) clearTimeout(t); timers.clear(); } };

      let opened = false;          // `open` fired for the current HTTP response
      let gotEvent = false;        // this EventSource delivered at least one frame: streaming works
      let messageSinceError = false;
      let messageSinceOpen = false;
      let errors = 0;              // consecutive errors with no event in between
      let failedPolls = 0;         // poll mode: consecutive errors with no `open` in between
      let openTimer = null;        // auto: no response headers at all
      let silenceTimer = null;     // auto: headers but no event
      let healthyTimer = null;
      const watch = auto && !poll;

      // auto: a buffering proxy (nginx gzipping text/event-stream, for one) holds back everything, the
      // response headers included, so `open` never fires.
      const armOpenTimer = (ms) => {
        cancel(openTimer);
        openTimer = watch ? later(() => this._switchToPoll("no response within " + ms + " ms (buffering proxy?)"), ms) : null;
      };

      // auto: other proxies pass the headers and hold the body. A quiet stream may also just mean the job has
      // published nothing new, so ask (one poll-mode request, resuming where we are) whether there is an event
      // we should have received. Poll mode answers 200 even for a session with no events yet: no console noise.
      const armSilenceTimer = (ms) => {
        cancel(silenceTimer);
        silenceTimer = watch && !gotEvent ? later(() => checkSilence(ms), ms) : null;
      };
      const checkSilence = async (waited) => {
        let newer = false;
        try {
          const response = await fetch(this._eventsUrl(true), this._fetchInit());
          if (response.status === 200) {
            newer = parseEventStream(await response.text()).events.some((frame) => FRAME_KINDS.includes(frame.event));
          }
        } catch (error) {
          this._debug("silence probe failed", error);
        }
        if (!alive() || gotEvent || !opened) return;
        if (!newer) {
          // Quiet, not stuck: look again later (a cheap JSON request), less often as the silence goes on.
          armSilenceTimer(Math.min(waited * 2, 15000));
          return;
        }
        // The event may simply be in flight: give it a moment before calling the stream stuck.
        cancel(silenceTimer);
        silenceTimer = later(() => this._switchToPoll("the stream withholds events (buffering proxy?)"), 1500);
      };

      const onFrame = (kind) => (ev) => {
        if (!alive()) return;
        gotEvent = true;
        messageSinceError = true;
        messageSinceOpen = true;
        errors = 0;
        cancel(silenceTimer);
        silenceTimer = null;
        this._deliverText(kind, ev.data, ev.lastEventId);
      };
      for (const kind of FRAME_KINDS) es.addEventListener(kind, onFrame(kind));

      es.addEventListener("open", () => {
        if (!alive()) return;
        opened = true;
        messageSinceOpen = false;
        failedPolls = 0;
        cancel(openTimer);
        openTimer = null;
        armSilenceTimer(stall);
        // A connection that stays up is healthy even if the session is quiet.
        cancel(healthyTimer);
        healthyTimer = later(() => { errors = 0; this._attempt = 0; }, stall * 2);
        this._setState(poll ? "polling" : "open");
      });

      es.addEventListener("error", () => {
        if (!alive()) return;
        cancel(healthyTimer);
        cancel(silenceTimer);
        silenceTimer = null;
        if (es.readyState === root.EventSource.CLOSED) {
          // The browser gave up: a 204 (the session is over), an HTTP error or a wrong content type.
          // One poll request tells which, and delivers whatever we missed.
          this._recover("EventSource closed by the browser");
          return;
        }
        // CONNECTING: the browser reconnects by itself (with Last-Event-ID) after the `retry:` delay. But its
        // URL is fixed: if it must now carry a resume id it has no Last-Event-ID for, open a new EventSource.
        if (opened && !messageSinceOpen && this._sawEmptySession()) {
          this._openEventSource(poll, true);
          return;
        }
        if (poll) {
          // The end of every poll response is an "error"; only errors with no response in between are failures.
          if (!opened) failedPolls += 1;
          opened = false;
          if (failedPolls >= 2) this._setState("connecting");
          return;
        }
        // Count only connections that were accepted and then died without delivering anything (a proxy that
        // cuts streams). A refused connection (server restarting) is not a reason to poll: the browser retries.
        if (opened && !messageSinceError) errors += 1;
        opened = false;
        messageSinceError = false;
        this._setState("connecting");
        if (auto && errors >= this._opts.maxErrors) {
          this._switchToPoll(errors + " errors in a row without an event");
          return;
        }
        // The reconnection comes after the server's retry delay, which we cannot read: allow for it.
        armOpenTimer(stall * 3);
      });

      armOpenTimer(stall);
    }

    _switchToPoll(reason) {
      if (this._done) return;
      this._debug("falling back to poll mode:", reason);
      this._transport = null; // so that _setTransport reports the switch with its reason
      this._setTransport("poll", reason);
      // No id yet: the stream may have withheld events (a buffering proxy holds the snapshot and what followed),
      // so the first poll asks for the whole history; without a resume id it would get a snapshot and skip them.
      if (this._lastId === null && this._resumeFrom === null) this._resumeFrom = "0";
      if (typeof root.EventSource === "function") this._openEventSource(true);
      else this._fetchPoll();
    }

    /** WebSocket transport: one JSON message per frame; reconnects with backoff until the terminal event. */
    _openWebSocket() {
      this._teardown();
      const alive = this._guard();
      this._setTransport("ws", "websocket");
      this._setState("connecting");

      const ws = new root.WebSocket(this._wsUrl());
      let pinger = null;
      let healthy = null;
      let established = false;
      let framesReceived = 0;
      this._conn = {
        close() {
          clearInterval(pinger);
          clearTimeout(healthy);
          ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
          if (ws.readyState === ws.CONNECTING || ws.readyState === ws.OPEN) ws.close(1000);
        },
      };

      ws.onmessage = (ev) => {
        if (!alive()) return;
        let message;
        try {
          message = JSON.parse(ev.data);
        } catch (error) {
          this._debug("ignoring a message that is not JSON", error);
          return;
        }
        if (message === null || typeof message !== "object") return;
        if (message.type === "connection_established") {
          established = true;
          this._setState("open");
          healthy = setTimeout(() => { if (alive()) this._attempt = 0; }, this._opts.stallTimeout * 2);
          pinger = setInterval(() => {
            if (alive() && ws.readyState === ws.OPEN) ws.send('{"type":"ping"}');
          }, this._opts.wsPingInterval);
          return;
        }
        if (FRAME_KINDS.includes(message.type)) {
          framesReceived += 1;
          this._deliver(message.type, message, message.id);
        }
        // pong, status_response and error replies need no handling here.
      };

      ws.onerror = () => {}; // always followed by `close`, handled there

      ws.onclose = (ev) => {
        if (!alive()) return;
        clearInterval(pinger);
        clearTimeout(healthy);
        if (ev.code === 1008) {
          // Refused (the reason says why): one poll request gets the HTTP status (401 or 403) for the error.
          this._recover("WebSocket refused (1008): " + ev.reason);
          return;
        }
        if (established && framesReceived === 0) this._sawEmptySession();
        // The terminal event closes the client before this point, so any close here (server restart, network,
        // even a 1000 if the session ended while we were away) means: find out where we are and carry on.
        this._recover("WebSocket closed (" + ev.code + ")");
      };
    }

    /**
     * After a connection died without the terminal event: wait (backoff), then make one poll request. It
     * answers the questions EventSource cannot — 204 means the session is over, 401/403 a fatal error — and
     * delivers the events we missed; then the transport in use is opened again.
     */
    _recover(reason) {
      if (this._done) return;
      this._debug("recovering:", reason);
      const transport = this._transport;
      this._teardown();
      const alive = this._guard();
      this._setState("connecting");
      const attempt = this._attempt;
      const delay = attempt === 0 ? 0 : this._backoffDelay();
      if (attempt === 0) this._attempt = 1;
      this._retryTimer = setTimeout(async () => {
        this._retryTimer = null;
        const outcome = await this._pollOnce(alive);
        if (!alive() || outcome.kind === "done") return;
        if (outcome.kind === "retry") {
          this._recover(reason);
          return;
        }
        if (transport === "ws") this._openWebSocket();
        else if (typeof root.EventSource === "function") this._openEventSource(transport === "poll");
        else this._fetchPoll();
      }, delay);
    }

    /**
     * One poll-mode request with fetch(): delivers its frames. Resolves to {kind: "ok", retry} (the session goes
     * on), {kind: "done"} (terminal event, 204 or fatal error: the client is closed) or {kind: "retry"}.
     */
    async _pollOnce(alive) {
      let response;
      let body;
      try {
        response = await fetch(this._eventsUrl(true), this._fetchInit());
        body = response.status === 204 ? "" : await response.text();
      } catch (error) {
        this._debug("poll request failed", error);
        return { kind: "retry" };
      }
      if (!alive()) return { kind: "done" };
      if (response.status === 204) {
        await this._finishAfter204();
        return { kind: "done" };
      }
      if (response.ok) {
        const parsed = parseEventStream(body);
        const frames = parsed.events.filter((frame) => FRAME_KINDS.includes(frame.event));
        for (const frame of frames) {
          if (this._deliverText(frame.event, frame.data, frame.id)) return { kind: "done" };
        }
        if (frames.length === 0) this._sawEmptySession();
        return { kind: "ok", retry: parsed.retry };
      }
      if (response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429) {
        let message = "HTTP " + response.status;
        try {
          message = JSON.parse(body).error || message;
        } catch (error) {
          // not a JSON error body (a proxy's page, say): keep the status line
        }
        this._fail(response.status, message);
        return { kind: "done" };
      }
      return { kind: "retry" };
    }

    /** Poll mode without EventSource: a fetch() loop paced by the server's `retry:` line. */
    _fetchPoll() {
      this._teardown();
      const alive = this._guard();
      this._setTransport("poll", "poll mode (fetch)");
      let timer = null;
      this._conn = { close() { clearTimeout(timer); } };
      let interval = 2000;
      const loop = async () => {
        const outcome = await this._pollOnce(alive);
        if (!alive() || outcome.kind === "done") return;
        let delay;
        if (outcome.kind === "ok") {
          this._attempt = 0;
          if (outcome.retry !== null) interval = outcome.retry;
          this._setState("polling");
          delay = interval;
        } else {
          this._setState("connecting");
          delay = this._backoffDelay();
        }
        timer = setTimeout(() => { if (alive()) loop(); }, delay);
      };
      this._setState("connecting");
      loop();
    }
  }

  ProgressClient.parseEventId = parseEventId;
  ProgressClient.compareEventIds = compareEventIds;
  ProgressClient.parseEventStream = parseEventStream;
  ProgressClient.TERMINAL_STATUSES = TERMINAL_STATUSES;

  root.ProgressClient = ProgressClient;
})(globalThis);

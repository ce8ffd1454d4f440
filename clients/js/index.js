// Publish an application's events to a Squilla application stream (docs/publish.md).
//
// The protocol is HTTP and JSON only; this module uses the runtime's own `fetch` (Node 18 or
// later, Deno, Bun) and has no dependencies:
//
// - a background loop holds `GET {gateway}/api/v1/streams/{app}/{stream}/subscriptions` open:
//   one JSON line per change of what is subscribed (and a repeat every 10 s);
// - while no subscription reads the stream, `publish` returns at once: nothing is kept or sent;
// - while one does, each event is encoded as JSON at once (what does not encode as a JSON
//   object is dropped and counted), waits in a bounded buffer (`bufferEvents` events and
//   `bufferBytes` bytes per gateway), and is sent every `flushIntervalMs` as JSON lines to
//   `POST {gateway}/api/v1/streams/{app}/{stream}/events`, where the gateway applies each
//   subscription's query (this client does not evaluate queries itself);
// - a full buffer or a failed send drops events, counted in `stats().dropped` and reported to
//   the gateway (`x-squilla-dropped`) with the next send. Nothing makes the caller wait on
//   the network. The open control connections keep a Node process running until `close()`.
//
// With several gateways, each gets the events while its own subscribers want any, and one of
// them, the *primary* (the first connected in an order rotated per publisher), also while jobs
// read the stream; the others are told `x-squilla-jobs: false`, so that a job gets each event
// once. Counts are then of copies: an event sent to two gateways counts twice.

/** A control connection silent this long (it repeats itself every 10 s) counts as lost. */
const SILENT_MS = 30_000;
/** Pauses between reconnections double from the first to the last. */
const PAUSE_FIRST_MS = 100;
const PAUSE_LAST_MS = 5_000;
/** The most gateways one publisher connects to. */
const MAX_GATEWAYS = 16;
/** A control line longer than this ends the connection. */
const MAX_LINE = 1 << 20;
/** The largest `bufferBytes`: one send stays under the gateway's 8 MiB body limit. */
const MAX_BUFFER_BYTES = 7 << 20;

/** Sleeps `ms` unless `signal` aborts; a background pause (`keepAlive` false) does not keep
 * Node running, a wait the caller awaits does. */
const sleep = (ms, signal, keepAlive = false) =>
  new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    if (!keepAlive) timer.unref?.();
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });

/** The bytes of `text` in UTF-8 (as sent), without encoding it. */
function utf8Length(text) {
  let n = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    // Two bytes below U+0800; three above; a surrogate pair (two units) four.
    if (c >= 0x80) n += c < 0x800 || (c >= 0xd800 && c < 0xe000) ? 1 : 2;
  }
  return n;
}

/** One gateway: what is subscribed there, and the events waiting for it. */
class Link {
  constructor(base, app, name) {
    const path = `/api/v1/streams/${encodeURIComponent(app)}/${encodeURIComponent(name)}`;
    this.control = `${base}${path}/subscriptions`;
    this.events = `${base}${path}/events`;
    this.connected = false;
    this.subscribers = 0;
    this.jobs = 0;
    this.primary = false;
    this.wants = false;
    this.pending = [];
    this.pendingBytes = 0;
    this.sending = false;
    this.unreported = 0;
    this.lastError = null;
  }
}

/** Publishes one stream's events through one gateway or several. */
export class Publisher {
  /**
   * @param {object} options
   * @param {string | string[]} options.gateway base URL of a gateway (`http://127.0.0.1:8080`),
   *   a comma-separated list of them, or an array
   * @param {string} options.stream `<app>/<stream>`
   * @param {string} [options.token] the tenant's bearer token
   * @param {number} [options.bufferEvents=65536] events kept per gateway between sends; past it they are dropped
   * @param {number} [options.bufferBytes=4194304] bytes of JSON kept per gateway between sends (at most 7 MiB)
   * @param {number} [options.flushIntervalMs=50] time between sends
   * @param {number} [options.timeoutMs=5000] one send's limit; a failed send drops its events
   */
  constructor({
    gateway,
    stream,
    token,
    bufferEvents = 65536,
    bufferBytes = 4 << 20,
    flushIntervalMs = 50,
    timeoutMs = 5000,
  }) {
    const [app, name, ...rest] = String(stream).split("/");
    if (!app || !name || rest.length > 0) {
      throw new TypeError(`${JSON.stringify(stream)} is not a stream name: <app>/<stream>`);
    }
    const listed = Array.isArray(gateway) ? gateway : String(gateway).split(",");
    const bases = [...new Set(listed.map((g) => String(g).trim().replace(/\/+$/, "")).filter(Boolean))];
    if (bases.length < 1 || bases.length > MAX_GATEWAYS) {
      throw new TypeError(`${bases.length} gateways; a publisher connects to 1 to ${MAX_GATEWAYS}`);
    }
    this._links = bases.map((base) => new Link(base, app, name));
    const first = Math.floor(Math.random() * bases.length);
    this._order = bases.map((_, i) => this._links[(first + i) % bases.length]);
    this._token = token;
    this._bufferEvents = Math.max(1, bufferEvents);
    this._bufferBytes = Math.min(Math.max(1, bufferBytes), MAX_BUFFER_BYTES);
    this._timeoutMs = timeoutMs;
    this._wanted = false;
    this._sent = 0;
    this._dropped = 0;
    this._stop = new AbortController();
    for (const link of this._links) this._follow(link);
    this._timer = setInterval(() => this._links.forEach((link) => this._send(link)), flushIntervalMs);
    this._timer.unref?.();
  }

  /** Whether some subscription reads the stream now. */
  wanted() {
    return this._wanted;
  }

  /**
   * Publishes one event (an object of JSON values); does nothing while nobody subscribes. The
   * event is encoded at once: later changes to it are not sent. One that does not encode as a
   * JSON object (a BigInt, a cycle, a Date, not an object) is dropped and counted. Never throws.
   */
  publish(event) {
    if (!this._wanted) return;
    let line;
    try {
      line = JSON.stringify(event);
    } catch {
      line = undefined;
    }
    const ok = typeof line === "string" && line.startsWith("{");
    const bytes = ok ? utf8Length(line) + 1 : 0;
    for (const link of this._links) {
      if (!link.wants) continue;
      if (!ok || link.pending.length >= this._bufferEvents || link.pendingBytes + bytes > this._bufferBytes) {
        this._dropped += 1;
        link.unreported += 1;
        continue;
      }
      link.pending.push(line);
      link.pendingBytes += bytes;
    }
  }

  /**
   * The counts so far: `{connected, gatewaysConnected, subscriptions, sent, dropped, lastError}`;
   * `lastError` is why a control connection last failed (a refusal such as `401 unauthorized`,
   * or a network error), `null` once every gateway has answered.
   */
  stats() {
    const connected = this._links.filter((l) => l.connected).length;
    return {
      connected: connected > 0,
      gatewaysConnected: connected,
      subscriptions: this._links.reduce((n, l) => n + l.subscribers + (l.primary ? l.jobs : 0), 0),
      sent: this._sent,
      dropped: this._dropped,
      lastError: this._links.map((l) => l.lastError).find((e) => e !== null) ?? null,
    };
  }

  /** Resolves whether every gateway has said what is subscribed there within `timeoutMs`. */
  async waitConnected(timeoutMs) {
    return this._until(() => this._links.every((l) => l.connected), timeoutMs);
  }

  /** Resolves whether every event kept so far was sent or dropped within `timeoutMs`. */
  async flush(timeoutMs = 10_000) {
    return this._until(() => this._links.every((l) => l.pending.length === 0 && !l.sending), timeoutMs);
  }

  /** Sends what waits (up to `timeoutMs`) and stops. */
  async close(timeoutMs = 10_000) {
    await this.flush(timeoutMs);
    clearInterval(this._timer);
    this._stop.abort();
    for (const link of this._links) link.connected = false;
    this._changed();
  }

  async _until(done, timeoutMs) {
    const until = Date.now() + timeoutMs;
    while (!done()) {
      if (Date.now() >= until || this._stop.signal.aborted) return done();
      await sleep(10, this._stop.signal, true);
    }
    return true;
  }

  _headers() {
    return this._token ? { authorization: `Bearer ${this._token}` } : {};
  }

  /** Chooses the primary (the first connected gateway in this publisher's order) and what each gateway wants. */
  _changed() {
    const primary = this._order.find((l) => l.connected);
    for (const link of this._links) {
      link.primary = link === primary;
      link.wants = link.connected && (link.subscribers > 0 || (link.primary && link.jobs > 0));
    }
    this._wanted = this._links.some((l) => l.wants);
  }

  async _follow(link) {
    const stop = this._stop.signal;
    let pause = PAUSE_FIRST_MS;
    while (!stop.aborted) {
      const connection = new AbortController();
      const abort = () => connection.abort();
      stop.addEventListener("abort", abort, { once: true });
      const silence = () => {
        const timer = setTimeout(abort, SILENT_MS);
        timer.unref?.();
        return timer;
      };
      let silent = silence();
      try {
        const response = await fetch(link.control, { headers: this._headers(), signal: connection.signal });
        if (response.ok && response.body) {
          const decoder = new TextDecoder();
          let text = "";
          for await (const chunk of response.body) {
            clearTimeout(silent);
            silent = silence();
            text += decoder.decode(chunk, { stream: true });
            let end;
            while ((end = text.indexOf("\n")) >= 0) {
              const line = text.slice(0, end).trim();
              text = text.slice(end + 1);
              if (line) {
                this._learn(link, JSON.parse(line));
                // Pauses start again only after a connection that said something.
                pause = PAUSE_FIRST_MS;
              }
            }
            if (text.length > MAX_LINE) throw new Error("a control line is too long");
          }
        } else {
          let refusal = "";
          try {
            const body = JSON.parse(await response.text());
            refusal = ` ${body.code}: ${body.message}`;
          } catch {
            // Not the gateway's JSON error: the status says enough.
          }
          link.lastError = `the gateway answered ${response.status}${refusal}`;
        }
      } catch (e) {
        // A refused or cut connection, a silent one, or a line that is not JSON: try again.
        if (!stop.aborted) link.lastError = String(e?.cause?.message ?? e?.message ?? e);
      } finally {
        clearTimeout(silent);
        stop.removeEventListener("abort", abort);
        connection.abort();
      }
      // The connection is gone, and the subscriptions it served with it.
      link.connected = false;
      link.subscribers = link.jobs = 0;
      this._changed();
      await sleep(pause, stop);
      pause = Math.min(pause * 2, PAUSE_LAST_MS);
    }
  }

  _learn(link, interest) {
    const wanted = interest?.subscriptions;
    if (!Array.isArray(wanted)) throw new Error("subscriptions is not a list");
    link.jobs = wanted.filter((w) => w && w.job === true).length;
    link.subscribers = wanted.length - link.jobs;
    link.connected = true;
    link.lastError = null;
    this._changed();
  }

  async _send(link) {
    if (link.sending) return;
    // Drops are reported with events, or alone while the gateway is there.
    const reported = link.pending.length > 0 || link.connected ? link.unreported : 0;
    if (link.pending.length === 0 && reported === 0) return;
    const batch = link.pending;
    link.pending = [];
    link.pendingBytes = 0;
    link.unreported -= reported;
    link.sending = true;
    let ok = false;
    try {
      const headers = { ...this._headers(), "content-type": "application/x-ndjson", "x-squilla-dropped": String(reported) };
      if (!link.primary) headers["x-squilla-jobs"] = "false";
      const body = batch.length > 0 ? batch.join("\n") + "\n" : "";
      const response = await fetch(link.events, {
        method: "POST",
        headers,
        body,
        signal: AbortSignal.timeout(this._timeoutMs),
      });
      await response.arrayBuffer();
      ok = response.ok;
    } catch {
      // Refused, failed, cut or timed out: the events are lost (nothing is retried).
    } finally {
      if (ok) {
        this._sent += batch.length;
      } else {
        this._dropped += batch.length;
        link.unreported += reported + batch.length;
      }
      link.sending = false;
    }
  }
}

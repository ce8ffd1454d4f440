// Publish an application's events to a Squilla application stream (docs/publish.md).
//
// The protocol is HTTP and JSON only; this module uses the runtime's own `fetch` (Node 18 or
// later, Deno, Bun) and has no dependencies:
//
// - a background loop holds `GET {gateway}/api/v1/streams/{app}/{stream}/subscriptions` open:
//   one JSON line per change of what is subscribed (and a repeat every 10 s);
// - while no subscription reads the stream, `publish` returns at once: nothing is kept or sent;
// - while one does, events wait in a bounded buffer and are sent every `flushIntervalMs` as
//   JSON lines to `POST {gateway}/api/v1/streams/{app}/{stream}/events`, where the gateway
//   applies each subscription's query (this client does not evaluate queries itself);
// - a full buffer or a failed send drops events, counted in `stats().dropped` and reported to
//   the gateway (`x-squilla-dropped`) with the next send. Nothing makes the caller wait on
//   the network, and the publisher's timers do not keep a process alive.

/** A control connection silent this long (it repeats itself every 10 s) counts as lost. */
const SILENT_MS = 30_000;
/** Pauses between reconnections double from the first to the last. */
const PAUSE_FIRST_MS = 100;
const PAUSE_LAST_MS = 5_000;

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    timer.unref?.();
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });

/** Publishes one stream's events through a gateway. */
export class Publisher {
  /**
   * @param {object} options
   * @param {string} options.gateway base URL of a gateway, e.g. `http://127.0.0.1:8080`
   * @param {string} options.stream `<app>/<stream>`
   * @param {string} [options.token] the tenant's bearer token
   * @param {number} [options.bufferEvents=65536] events kept between sends; past it they are dropped
   * @param {number} [options.flushIntervalMs=50] time between sends
   * @param {number} [options.timeoutMs=5000] one send's limit; a failed send drops its events
   */
  constructor({ gateway, stream, token, bufferEvents = 65536, flushIntervalMs = 50, timeoutMs = 5000 }) {
    const [app, name, ...rest] = String(stream).split("/");
    if (!app || !name || rest.length > 0) {
      throw new TypeError(`${JSON.stringify(stream)} is not a stream name: <app>/<stream>`);
    }
    const base = String(gateway).replace(/\/+$/, "");
    this._control = `${base}/api/v1/streams/${encodeURIComponent(app)}/${encodeURIComponent(name)}/subscriptions`;
    this._events = `${base}/api/v1/streams/${encodeURIComponent(app)}/${encodeURIComponent(name)}/events`;
    this._token = token;
    this._bufferEvents = bufferEvents;
    this._flushIntervalMs = flushIntervalMs;
    this._timeoutMs = timeoutMs;
    this._pending = [];
    this._sending = false;
    this._wanted = false;
    this._connected = false;
    this._subscriptions = 0;
    this._sent = 0;
    this._dropped = 0;
    this._unreported = 0;
    this._stop = new AbortController();
    this._follow();
    this._timer = setInterval(() => this._send(), flushIntervalMs);
    this._timer.unref?.();
  }

  /** Whether some subscription reads the stream now. */
  wanted() {
    return this._wanted;
  }

  /** Publishes one event (an object of JSON values); does nothing while nobody subscribes. */
  publish(event) {
    if (!this._wanted) return;
    if (this._pending.length >= this._bufferEvents) {
      this._dropped += 1;
      this._unreported += 1;
      return;
    }
    this._pending.push(event);
  }

  /** The counts so far: `{connected, subscriptions, sent, dropped}`. */
  stats() {
    return {
      connected: this._connected,
      subscriptions: this._subscriptions,
      sent: this._sent,
      dropped: this._dropped,
    };
  }

  /** Resolves whether the gateway has said what is subscribed within `timeoutMs`. */
  async waitConnected(timeoutMs) {
    return this._until(() => this._connected, timeoutMs);
  }

  /** Resolves whether every event kept so far was sent or dropped within `timeoutMs`. */
  async flush(timeoutMs = 10_000) {
    return this._until(() => this._pending.length === 0 && !this._sending, timeoutMs);
  }

  /** Sends what waits (up to `timeoutMs`) and stops. */
  async close(timeoutMs = 10_000) {
    await this.flush(timeoutMs);
    clearInterval(this._timer);
    this._stop.abort();
    this._wanted = false;
    this._connected = false;
  }

  async _until(done, timeoutMs) {
    const until = Date.now() + timeoutMs;
    while (!done()) {
      if (Date.now() >= until || this._stop.signal.aborted) return done();
      await sleep(10, this._stop.signal);
    }
    return true;
  }

  _headers() {
    return this._token ? { authorization: `Bearer ${this._token}` } : {};
  }

  async _follow() {
    const stop = this._stop.signal;
    let pause = PAUSE_FIRST_MS;
    while (!stop.aborted) {
      const connection = new AbortController();
      const abort = () => connection.abort();
      stop.addEventListener("abort", abort, { once: true });
      let silent = setTimeout(abort, SILENT_MS);
      try {
        const response = await fetch(this._control, { headers: this._headers(), signal: connection.signal });
        if (response.ok && response.body) {
          pause = PAUSE_FIRST_MS;
          const decoder = new TextDecoder();
          let text = "";
          for await (const chunk of response.body) {
            clearTimeout(silent);
            silent = setTimeout(abort, SILENT_MS);
            text += decoder.decode(chunk, { stream: true });
            let end;
            while ((end = text.indexOf("\n")) >= 0) {
              const line = text.slice(0, end).trim();
              text = text.slice(end + 1);
              if (line) this._learn(JSON.parse(line));
            }
          }
        } else {
          await response.body?.cancel();
        }
      } catch {
        // A refused or cut connection, a silent one, or a line that is not JSON: try again.
      } finally {
        clearTimeout(silent);
        stop.removeEventListener("abort", abort);
        connection.abort();
      }
      // The connection is gone, and the subscriptions it served with it.
      this._wanted = false;
      this._connected = false;
      this._subscriptions = 0;
      await sleep(pause, stop);
      pause = Math.min(pause * 2, PAUSE_LAST_MS);
    }
  }

  _learn(interest) {
    const subscriptions = Array.isArray(interest.subscriptions) ? interest.subscriptions.length : 0;
    this._subscriptions = subscriptions;
    this._wanted = subscriptions > 0;
    this._connected = true;
  }

  async _send() {
    if (this._sending || (this._pending.length === 0 && this._unreported === 0)) return;
    const batch = this._pending;
    const reported = this._unreported;
    this._pending = [];
    this._unreported = 0;
    this._sending = true;
    let ok = false;
    let body = "";
    let lines = 0;
    for (const event of batch) {
      try {
        if (typeof event !== "object" || event === null || Array.isArray(event)) continue;
        body += JSON.stringify(event) + "\n";
        lines += 1;
      } catch {
        // Not JSON (a BigInt, a cycle): dropped, as is what is not an object, and reported with the next send.
      }
    }
    const unencodable = batch.length - lines;
    this._dropped += unencodable;
    this._unreported += unencodable;
    try {
      const response = await fetch(this._events, {
        method: "POST",
        headers: { ...this._headers(), "content-type": "application/x-ndjson", "x-squilla-dropped": String(reported) },
        body,
        signal: AbortSignal.timeout(this._timeoutMs),
      });
      await response.arrayBuffer();
      ok = response.ok;
    } catch {
      // A refused, failed or timed-out send: its events are lost.
    }
    if (ok) {
      this._sent += lines;
    } else {
      this._dropped += lines;
      this._unreported += reported + lines;
    }
    this._sending = false;
  }
}

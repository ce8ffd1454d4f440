"""Publish an application's events to a Squilla application stream (docs/publish.md).

The protocol is HTTP and JSON only (standard library, no dependencies). For each gateway:

- a background thread holds ``GET {gateway}/api/v1/streams/{app}/{stream}/subscriptions``
  open: one JSON line per change of what is subscribed there (and a repeat every 10 s);
- while no subscription reads the stream, :meth:`Publisher.publish` returns at once: nothing
  is kept or sent;
- while one does, each event is encoded as JSON at once (what is not a dict of JSON values is
  dropped and counted), waits in a bounded buffer (``buffer_events`` events and
  ``buffer_bytes`` bytes per gateway), and is sent every ``flush_interval`` as JSON lines to
  ``POST {gateway}/api/v1/streams/{app}/{stream}/events``, where the gateway applies each
  subscription's query (this client does not evaluate queries itself);
- a full buffer or a failed send drops events, counted in :attr:`Publisher.dropped` and
  reported to the gateway (``x-squilla-dropped``) with the next send. Nothing blocks the
  caller on the network.

With several gateways, each gets the events while its own subscribers want any, and one of
them, the *primary* (the first connected in an order rotated per publisher), also while jobs
read the stream; the others are told ``x-squilla-jobs: false``, so that a job gets each event
once. Counts are then of copies: an event sent to two gateways counts twice.
"""

import json
import random
import threading
import time
import urllib.error
import urllib.request

__all__ = ["Publisher"]

SILENT_SECONDS = 30.0
MAX_GATEWAYS = 16
# A control line longer than this ends the connection.
MAX_LINE = 1 << 20
# The largest buffer_bytes: one send stays under the gateway's 8 MiB body limit.
MAX_BUFFER_BYTES = 7 << 20


class _Link:
    """One gateway: what is subscribed there, and the events waiting for it."""

    def __init__(self, base, app, name):
        self.control = f"{base}/api/v1/streams/{app}/{name}/subscriptions"
        self.events = f"{base}/api/v1/streams/{app}/{name}/events"
        self.connected = False
        self.subscribers = 0
        self.jobs = 0
        self.primary = False
        self.wants = False
        self.pending = []
        self.pending_bytes = 0
        self.sending = False
        self.unreported = 0
        self.last_error = None


class Publisher:
    """Publishes one stream's events through one gateway or several.

    ``gateway`` is a base URL, a comma-separated list of them, or a list.
    """

    def __init__(
        self,
        gateway,
        stream,
        token=None,
        buffer_events=65536,
        buffer_bytes=4 << 20,
        flush_interval=0.05,
        timeout=5.0,
    ):
        app, sep, name = stream.partition("/")
        if not sep or not app or not name or "/" in name:
            raise ValueError(f"{stream!r} is not a stream name: <app>/<stream>")
        gateways = gateway.split(",") if isinstance(gateway, str) else list(gateway)
        bases = []
        for g in gateways:
            base = g.strip().rstrip("/")
            if base and base not in bases:
                bases.append(base)
        if not 1 <= len(bases) <= MAX_GATEWAYS:
            raise ValueError(f"{len(bases)} gateways; a publisher connects to 1 to {MAX_GATEWAYS}")
        self._links = [_Link(base, app, name) for base in bases]
        first = random.randrange(len(bases))
        self._order = [self._links[(first + i) % len(bases)] for i in range(len(bases))]
        self._token = token
        self._buffer_events = max(1, buffer_events)
        self._buffer_bytes = min(max(1, buffer_bytes), MAX_BUFFER_BYTES)
        self._flush_interval = flush_interval
        self._timeout = timeout
        self._lock = threading.Lock()
        self._wanted = False
        self._stop = threading.Event()
        self.sent = 0
        self.dropped = 0
        self._threads = []
        for link in self._links:
            self._threads.append(threading.Thread(target=self._follow, args=(link,), name="squilla-control", daemon=True))
            self._threads.append(threading.Thread(target=self._send_loop, args=(link,), name="squilla-send", daemon=True))
        for t in self._threads:
            t.start()

    @property
    def connected(self):
        """Whether some gateway has said what is subscribed there."""
        return any(link.connected for link in self._links)

    @property
    def subscriptions(self):
        """Distinct queries subscribed now, summed over the gateways."""
        return sum(link.subscribers + (link.jobs if link.primary else 0) for link in self._links)

    @property
    def last_error(self):
        """Why a control connection last failed (a refusal such as ``401 unauthorized``, or a
        network error); ``None`` once every gateway has answered."""
        return next((link.last_error for link in self._links if link.last_error), None)

    def wanted(self):
        """Whether some subscription reads the stream now."""
        return self._wanted

    def publish(self, event):
        """Publishes one event (a dict of JSON values); does nothing while nobody subscribes.

        The event is encoded at once: later changes to it are not sent. One that cannot be
        (not a dict, a value JSON lacks, NaN) is dropped and counted. Never raises."""
        if not self._wanted:
            return
        try:
            if not isinstance(event, dict):
                raise TypeError("an event is a dict")
            line = json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n"
        except Exception:
            line = None
        with self._lock:
            for link in self._links:
                if not link.wants:
                    continue
                if (
                    line is None
                    or len(link.pending) >= self._buffer_events
                    or link.pending_bytes + len(line) > self._buffer_bytes
                ):
                    self.dropped += 1
                    link.unreported += 1
                    continue
                link.pending.append(line)
                link.pending_bytes += len(line)

    def wait_connected(self, timeout):
        """Waits until every gateway has said what is subscribed there; whether they have."""
        until = time.monotonic() + timeout
        while not all(link.connected for link in self._links) and time.monotonic() < until:
            time.sleep(0.01)
        return all(link.connected for link in self._links)

    def flush(self, timeout=10.0):
        """Waits until every event kept so far is sent or dropped."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            with self._lock:
                if not any(link.pending or link.sending for link in self._links):
                    return True
            time.sleep(0.01)
        return False

    def close(self):
        """Sends what waits and stops."""
        self.flush()
        self._stop.set()

    def _headers(self):
        headers = {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _changed(self):
        """Chooses the primary (the first connected gateway in this publisher's order) and
        what each gateway wants. Called with the lock held."""
        primary = next((link for link in self._order if link.connected), None)
        for link in self._links:
            link.primary = link is primary
            link.wants = link.connected and (link.subscribers > 0 or (link.primary and link.jobs > 0))
        self._wanted = any(link.wants for link in self._links)

    def _follow(self, link):
        pause = 0.1
        while not self._stop.is_set():
            try:
                request = urllib.request.Request(link.control, headers=self._headers())
                with urllib.request.urlopen(request, timeout=SILENT_SECONDS) as response:
                    while not self._stop.is_set():
                        line = response.readline(MAX_LINE + 1)
                        if not line:
                            break
                        if len(line) > MAX_LINE:
                            raise ValueError("a control line is too long")
                        wanted = json.loads(line)["subscriptions"]
                        if not isinstance(wanted, list):
                            raise ValueError("subscriptions is not a list")
                        jobs = sum(1 for w in wanted if isinstance(w, dict) and w.get("job") is True)
                        with self._lock:
                            link.subscribers = len(wanted) - jobs
                            link.jobs = jobs
                            link.connected = True
                            link.last_error = None
                            self._changed()
                        # Pauses start again only after a connection that said something.
                        pause = 0.1
            except urllib.error.HTTPError as refused:
                try:
                    body = json.loads(refused.read())
                    link.last_error = f"the gateway answered {refused.code} {body['code']}: {body['message']}"
                except Exception:
                    link.last_error = f"the gateway answered {refused.code}"
            except Exception as e:
                # Cut, silent, or not the protocol: connect again after a pause.
                if not self._stop.is_set():
                    link.last_error = str(e)
            # The connection is gone, and the subscriptions it served with it.
            with self._lock:
                link.connected = False
                link.subscribers = link.jobs = 0
                self._changed()
            self._stop.wait(pause)
            pause = min(pause * 2, 5.0)

    def _send_loop(self, link):
        while not self._stop.is_set():
            self._stop.wait(self._flush_interval)
            with self._lock:
                batch, link.pending, link.pending_bytes = link.pending, [], 0
                # Drops are reported with events, or alone while the gateway is there.
                reported = link.unreported if (batch or link.connected) else 0
                link.unreported -= reported
                link.sending = bool(batch)
                primary = link.primary
            if not batch and not reported:
                continue
            ok = False
            try:
                headers = self._headers()
                headers["Content-Type"] = "application/x-ndjson"
                headers["x-squilla-dropped"] = str(reported)
                if not primary:
                    headers["x-squilla-jobs"] = "false"
                body = "".join(batch).encode()
                request = urllib.request.Request(link.events, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self._timeout) as response:
                    response.read()
                ok = True
            except Exception:
                # Refused, failed, cut or timed out: the events are lost (nothing is retried).
                pass
            finally:
                with self._lock:
                    if ok:
                        self.sent += len(batch)
                    else:
                        self.dropped += len(batch)
                        link.unreported += reported + len(batch)
                    link.sending = False

"""Publish an application's events to a Squilla application stream (docs/publish.md).

The protocol is HTTP and JSON only (standard library, no dependencies):

- a background thread holds ``GET {gateway}/api/v1/streams/{app}/{stream}/subscriptions``
  open: one JSON line per change of what is subscribed (and a repeat every 10 s);
- while no subscription reads the stream, :meth:`Publisher.publish` returns at once: nothing
  is kept or sent;
- while one does, events wait in a bounded buffer and are sent every ``flush_interval`` as
  JSON lines to ``POST {gateway}/api/v1/streams/{app}/{stream}/events``, where the gateway
  applies each subscription's query (this client does not evaluate queries itself);
- a full buffer or a failed send drops events, counted in :attr:`Publisher.dropped` and
  reported to the gateway (``x-squilla-dropped``) with the next send. Nothing blocks the
  caller on the network.
"""

import json
import threading
import time
import urllib.error
import urllib.request

__all__ = ["Publisher"]

SILENT_SECONDS = 30.0


class Publisher:
    """Publishes one stream's events through a gateway."""

    def __init__(self, gateway, stream, token=None, buffer_events=65536, flush_interval=0.05, timeout=5.0):
        app, sep, name = stream.partition("/")
        if not sep or not app or not name:
            raise ValueError(f"{stream!r} is not a stream name: <app>/<stream>")
        base = gateway.rstrip("/")
        self._control = f"{base}/api/v1/streams/{app}/{name}/subscriptions"
        self._events = f"{base}/api/v1/streams/{app}/{name}/events"
        self._token = token
        self._buffer_events = buffer_events
        self._flush_interval = flush_interval
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pending = []
        self._wanted = False
        self._stop = threading.Event()
        self.connected = False
        self.subscriptions = 0
        self.sent = 0
        self.dropped = 0
        self._unreported = 0
        self._threads = [
            threading.Thread(target=self._follow, name="squilla-control", daemon=True),
            threading.Thread(target=self._send_loop, name="squilla-send", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def wanted(self):
        """Whether some subscription reads the stream now."""
        return self._wanted

    def publish(self, event):
        """Publishes one event (a dict of JSON values); does nothing while nobody subscribes."""
        if not self._wanted:
            return
        with self._lock:
            if len(self._pending) >= self._buffer_events:
                self.dropped += 1
                self._unreported += 1
                return
            self._pending.append(event)

    def wait_connected(self, timeout):
        """Waits until the gateway has said what is subscribed; whether it has."""
        until = time.monotonic() + timeout
        while not self.connected and time.monotonic() < until:
            time.sleep(0.01)
        return self.connected

    def flush(self, timeout=10.0):
        """Waits until every event kept so far is sent or dropped."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            with self._lock:
                if not self._pending and not self._sending:
                    return True
            time.sleep(0.01)
        return False

    def close(self):
        """Sends what waits and stops."""
        self.flush()
        self._stop.set()

    _sending = False

    def _headers(self):
        headers = {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _follow(self):
        pause = 0.1
        while not self._stop.is_set():
            try:
                request = urllib.request.Request(self._control, headers=self._headers())
                with urllib.request.urlopen(request, timeout=SILENT_SECONDS) as response:
                    pause = 0.1
                    for line in response:
                        if self._stop.is_set():
                            return
                        interest = json.loads(line)
                        self.subscriptions = len(interest.get("subscriptions", []))
                        self._wanted = self.subscriptions > 0
                        self.connected = True
            except (OSError, ValueError, urllib.error.URLError):
                pass
            # The connection is gone, and the subscriptions it served with it.
            self._wanted = False
            self.connected = False
            self._stop.wait(pause)
            pause = min(pause * 2, 5.0)

    def _send_loop(self):
        while not self._stop.is_set():
            self._stop.wait(self._flush_interval)
            with self._lock:
                batch, self._pending = self._pending, []
                reported, self._unreported = self._unreported, 0
                self._sending = bool(batch)
            if not batch and not reported:
                continue
            lines, unencodable = [], 0
            for e in batch:
                try:
                    if not isinstance(e, dict):
                        raise TypeError("an event is a dict")
                    lines.append(json.dumps(e, separators=(",", ":")) + "\n")
                except (TypeError, ValueError):
                    unencodable += 1
            body = "".join(lines).encode()
            headers = self._headers()
            headers["Content-Type"] = "application/x-ndjson"
            headers["x-squilla-dropped"] = str(reported)
            try:
                request = urllib.request.Request(self._events, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self._timeout) as response:
                    response.read()
                ok = True
            except (OSError, urllib.error.URLError):
                ok = False
            with self._lock:
                # An event that is not JSON is dropped (and reported with the next send).
                self.dropped += unencodable
                self._unreported += unencodable
                if ok:
                    self.sent += len(lines)
                else:
                    self.dropped += len(lines)
                    self._unreported += reported + len(lines)
                self._sending = False

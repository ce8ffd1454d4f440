"""`sentiment` in Python: the same contract and output as the Rust example
(examples/sentiment), built with componentize-py against the typed stage world.

Input: events with a text field (`field`, default `text`). An event is kept if its text
contains `keyword` (ASCII case-insensitive substring). Its score is the number of positive
words minus the number of negative words, where words are maximal runs of ASCII letters,
digits and apostrophes, compared ASCII-lowercased against the lists below. When a window
closes (on `tick`) and it saw a kept event, one event is emitted at the window's end:
`keyword`, `positive`, `negative`, `neutral`, `window-start-ms`, `window-end-ms`.

Parameters: `keyword` (required), `field` (default `text`), `window-ms` (default 10000).
"""

import re

# Every bindings module is imported here, at build time: the componentize-py runtime looks
# them up when it converts arguments, and a lookup that is not cached in `sys.modules` would
# search the (absent) filesystem at run time.
import wit_world.exports.typed_handler  # noqa: F401
import wit_world.imports.log  # noqa: F401
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Event, Field, StageError, Value_Int, Value_Text

POSITIVE = {"good", "great", "love", "excellent", "happy", "awesome", "fun", "best", "amazing", "like", "enjoyed",
            "brilliant"}
NEGATIVE = {"bad", "terrible", "hate", "awful", "sad", "worst", "boring", "broken", "slow", "poor", "disappointing",
            "buffering"}

WORD = re.compile(r"[A-Za-z0-9']+")
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def score(text):
    """Positive minus negative words in `text`."""
    total = 0
    for word in WORD.findall(text):
        word = word.translate(ASCII_LOWER)
        total += (word in POSITIVE) - (word in NEGATIVE)
    return total


def parse_int(name, raw):
    raw = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", raw) or not -2**63 <= int(raw) < 2**63:
        raise Err(f"parameter `{name}` = {raw!r} is not a valid i64")
    return int(raw)


def reported(method):
    """Turns an unexpected exception into a stage error carrying its message, instead of an
    uncaught exception (which the runtime could only report by trapping)."""
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except Err:
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes a stage error
            raise Err(StageError(f"{type(e).__name__}: {e}", False))
    return wrapper


class Sentiment:
    """One worker's state."""

    def __init__(self, params):
        values = {}
        for name, value in params:
            values.setdefault(name, value)
        if "keyword" not in values:
            raise Err("missing required parameter `keyword`")
        keyword = values["keyword"].strip()
        if not keyword:
            raise Err("parameter `keyword` must not be empty")
        self.keyword = keyword.translate(ASCII_LOWER)
        self.field = values.get("field", "text").strip()
        self.size = max(parse_int("window-ms", values.get("window-ms", "10000")), 1)
        self.windows = {}  # window start -> [positive, negative, neutral]
        self.closed_until = None

    def process(self, events):
        for event in events:
            text = None
            for field in event.fields:
                if field.name == self.field:
                    text = field.value.value if isinstance(field.value, Value_Text) else None
                    break
            if text is None or self.keyword not in text.translate(ASCII_LOWER):
                continue
            ts = event.timestamp_ms
            if self.closed_until is not None and ts < self.closed_until:
                continue  # late: its window has closed
            counts = self.windows.setdefault(ts // self.size * self.size, [0, 0, 0])
            s = score(text)
            counts[0 if s > 0 else 1 if s < 0 else 2] += 1
        return []

    def tick(self, now_ms):
        boundary = now_ms // self.size * self.size
        out = []
        for start in sorted(w for w in self.windows if w + self.size <= boundary):
            positive, negative, neutral = self.windows.pop(start)
            end = start + self.size
            out.append(Event(end, [
                Field("keyword", Value_Text(self.keyword)),
                Field("positive", Value_Int(positive)),
                Field("negative", Value_Int(negative)),
                Field("neutral", Value_Int(neutral)),
                Field("window-start-ms", Value_Int(start)),
                Field("window-end-ms", Value_Int(end)),
            ]))
        self.closed_until = boundary if self.closed_until is None else max(self.closed_until, boundary)
        return out


# The worker's stage, made by `init`. componentize-py may create a new `TypedHandler` for each
# call, so the state lives here, at module level (one instance of the component is one
# worker).
STAGE = None


def not_initialised():
    return Err(StageError("stage called before a successful init", False))


class TypedHandler(exports.TypedHandler):
    def init(self, params):
        global STAGE
        STAGE = Sentiment(params)

    @reported
    def process(self, events):
        if STAGE is None:
            raise not_initialised()
        return STAGE.process(events)

    @reported
    def tick(self, now_ms):
        if STAGE is None:
            raise not_initialised()
        return STAGE.tick(now_ms)


def _warm_up():
    """Runs every code path once at build time. componentize-py snapshots the interpreter
    after importing this module, when the build machine's files are still reachable; a module
    CPython imports lazily on first use would otherwise be looked up at run time, where the
    stage has no filesystem (its WASI imports are stubbed)."""
    handler = TypedHandler()
    handler.init([("keyword", "Warm"), ("window-ms", "+10")])
    try:
        handler.init([])
    except Err:
        pass
    handler.process([Event(1, [Field("text", Value_Text("WARM ünï good bad it's")), Field("n", Value_Int(1))])])
    handler.tick(100)
    StageError("", False)
    global STAGE
    STAGE = None


_warm_up()

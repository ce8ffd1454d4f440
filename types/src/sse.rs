//! Server-sent events as sinks carry them between agents, the master and job sources.
//!
//! A sink stream is a run of frames, each `data: <one JSON object>\n\n`, or
//! `event: <name>\ndata: <JSON>\n\n` for the `meta` and `ping` events, plus `:` comment lines
//! for keep-alive. Agents render whole batches of frames at once; the master passes complete
//! frames through without parsing them; readers that need events one by one (WebSocket
//! subscribers, job sources) use [`Parser`], which takes the bytes as they arrive, in pieces
//! of any size, looks at each byte a constant number of times, and keeps at most
//! [`MAX_LINE`] of an unfinished line.

/// One event of a sink stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `None` for an output event; `meta` or `ping` otherwise.
    pub name: Option<String>,
    /// Its data: one JSON text.
    pub data: String,
}

/// Appends one frame to `out`. `data` must not contain a newline (JSON from `serde_json`
/// never does).
pub fn frame(out: &mut Vec<u8>, name: Option<&str>, data: &str) {
    frame_with(out, name, |out| out.extend_from_slice(data.as_bytes()));
}

/// Appends one frame whose data `write` appends to `out` (on one line), so that JSON can be
/// written straight into the stream.
pub fn frame_with(out: &mut Vec<u8>, name: Option<&str>, write: impl FnOnce(&mut Vec<u8>)) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    write(out);
    out.extend_from_slice(b"\n\n");
}

/// Where the complete frames of `bytes` end — the index just past the last blank line, or 0
/// — looking only at blank lines that end at or after `from + 2`: for a reader that appends
/// to a buffer in which it found none before `from`, the search covers only what is new.
pub fn complete_from(bytes: &[u8], from: usize) -> usize {
    bytes.get(from..).and_then(|tail| tail.windows(2).rposition(|w| w == b"\n\n")).map_or(0, |i| from + i + 2)
}

/// The frames of `chunk`, each with its closing blank line (a last one without it, if the
/// chunk does not end on a frame's end).
pub fn frames(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.windows(2).position(|w| w == b"\n\n").map_or(rest.len(), |i| i + 2);
        let (frame, tail) = rest.split_at(end);
        rest = tail;
        Some(frame)
    })
}

/// How many events a chunk of complete frames counts as (at least 1).
pub fn frame_count(chunk: &[u8]) -> usize {
    chunk.windows(2).filter(|w| w == b"\n\n").count().max(1)
}

/// Longest line (and longest event data) a [`Parser`] keeps; longer ones are skipped whole.
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// An incremental reader of a sink stream.
#[derive(Debug, Default)]
pub struct Parser {
    carry: Vec<u8>,
    /// How much of `carry` is known to hold no newline.
    scanned: usize,
    /// Whether the rest of the current line is being skipped (it was too long).
    skipping: bool,
    name: Option<String>,
    data: String,
    /// Events skipped because a line or their data passed [`MAX_LINE`].
    pub oversized: u64,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `bytes` (continuing whatever came before) and hands every completed event to
    /// `out`. Comments and unknown fields are skipped; a frame without `data` yields nothing;
    /// an event with a line or data over [`MAX_LINE`] is skipped and counted in `oversized`.
    pub fn feed(&mut self, bytes: &[u8], mut out: impl FnMut(Event)) {
        self.carry.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            let from = start.max(self.scanned);
            let Some(len) = self.carry[from..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.carry.len();
                break;
            };
            let end = from + len;
            let mut line = &self.carry[start..end];
            start = end + 1;
            self.scanned = start;
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if line.is_empty() {
                if !self.data.is_empty() {
                    out(Event { name: self.name.take(), data: std::mem::take(&mut self.data) });
                }
                self.name = None;
            } else if let Some(v) = line.strip_prefix(b"data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(v.strip_prefix(b" ").unwrap_or(v)));
                if self.data.len() > MAX_LINE {
                    self.drop_event();
                }
            } else if let Some(v) = line.strip_prefix(b"event:") {
                self.name = Some(String::from_utf8_lossy(v).trim().to_owned());
            }
        }
        self.carry.drain(..start);
        self.scanned -= start;
        if self.carry.len() > MAX_LINE {
            self.carry.clear();
            self.scanned = 0;
            self.skipping = true;
            self.drop_event();
        }
    }

    fn drop_event(&mut self) {
        self.data.clear();
        self.name = None;
        self.oversized += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(text: &[u8], piece: usize) -> Vec<Event> {
        let (mut parser, mut events) = (Parser::new(), Vec::new());
        for chunk in text.chunks(piece) {
            parser.feed(chunk, |e| events.push(e));
        }
        events
    }

    #[test]
    fn frames_read_back_whatever_the_pieces() {
        let mut text = Vec::new();
        frame(&mut text, None, r#"{"a":1}"#);
        text.extend_from_slice(b": keep-alive\n\n");
        frame(&mut text, Some("meta"), r#"{"dropped":3}"#);
        text.extend_from_slice(b"data: {\"b\":\r\ndata: 2}\r\n\r\n");
        frame(&mut text, None, r#"{"c":"\n"}"#);
        let expected = vec![
            Event { name: None, data: r#"{"a":1}"#.into() },
            Event { name: Some("meta".into()), data: r#"{"dropped":3}"#.into() },
            Event { name: None, data: "{\"b\":\n2}".into() },
            Event { name: None, data: r#"{"c":"\n"}"#.into() },
        ];
        for piece in [1, 2, 3, 7, 1000] {
            assert_eq!(parse_in_pieces(&text, piece), expected, "pieces of {piece}");
        }
    }

    #[test]
    fn a_line_over_the_limit_is_skipped_and_what_follows_is_read() {
        let mut parser = Parser::new();
        let mut events = Vec::new();
        parser.feed(b"data: {\"a\":1}\n\ndata: ", |e| events.push(e));
        let piece = vec![b'x'; 1024 * 1024];
        for _ in 0..(MAX_LINE / piece.len() + 1) {
            parser.feed(&piece, |e| events.push(e));
        }
        assert!(parser.carry.len() <= MAX_LINE, "the parser's memory stays bounded");
        parser.feed(b"xx\n\ndata: {\"b\":2}\n\n", |e| events.push(e));
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert_eq!(parser.oversized, 1);
    }

    #[test]
    fn complete_finds_the_last_whole_frame() {
        assert_eq!(complete_from(b"", 0), 0);
        assert_eq!(complete_from(b"data: {}\n", 0), 0);
        assert_eq!(complete_from(b"data: {}\n\ndata: {", 0), 10);
        assert_eq!(complete_from(b"data: {}\n\ndata: {}\n\n", 0), 20);
        assert_eq!(complete_from(b"data: {}\n\ndata: {}\n\n", 11), 20);
        assert_eq!(complete_from(b"data: {}\n\ndata: {", 11), 0);
        assert_eq!(complete_from(b"ab", 5), 0);
    }
}

//! Server-sent events as sinks carry them between agents, the master and job sources.
//!
//! A sink stream is a run of frames, each `data: <one JSON object>\n\n`, or
//! `event: <name>\ndata: <JSON>\n\n` for the `meta` and `ping` events, plus `:` comment lines
//! for keep-alive. Agents render whole batches of frames at once; the master passes complete
//! frames through without parsing them; readers that need events one by one (WebSocket
//! subscribers, job sources) use [`Parser`], which takes the bytes as they arrive, in pieces
//! of any size, and touches each byte a constant number of times.

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
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Where the complete frames of `bytes` end: the index just past the last blank line, or 0.
pub fn complete(bytes: &[u8]) -> usize {
    bytes.windows(2).rposition(|w| w == b"\n\n").map_or(0, |i| i + 2)
}

/// An incremental reader of a sink stream.
#[derive(Debug, Default)]
pub struct Parser {
    carry: Vec<u8>,
    name: Option<String>,
    data: String,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `bytes` (continuing whatever came before) and hands every completed event to
    /// `out`. Comments and unknown fields are skipped; a frame without `data` yields nothing.
    pub fn feed(&mut self, bytes: &[u8], mut out: impl FnMut(Event)) {
        self.carry.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(len) = self.carry[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.carry[start..start + len];
            start += len + 1;
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
            } else if let Some(v) = line.strip_prefix(b"event:") {
                self.name = Some(String::from_utf8_lossy(v).trim().to_owned());
            }
        }
        self.carry.drain(..start);
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
    fn complete_finds_the_last_whole_frame() {
        assert_eq!(complete(b""), 0);
        assert_eq!(complete(b"data: {}\n"), 0);
        assert_eq!(complete(b"data: {}\n\ndata: {"), 10);
        assert_eq!(complete(b"data: {}\n\ndata: {}\n\n"), 20);
    }
}

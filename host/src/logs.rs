//! A worker's log: the lines its stage writes through the `log` import, kept in a bounded
//! ring so that a chatty or hostile guest costs a fixed amount of host memory.

use std::collections::VecDeque;

use squilla_types::time::now_ms;

/// Lines a worker's log keeps; older lines are dropped (and counted) past it.
pub const LOG_LINES: usize = 256;

/// Longest line kept, in bytes; longer lines are cut at a character boundary and marked `…`.
pub const LOG_LINE_BYTES: usize = 4096;

/// Severity of a log line (mirrors `squilla:stage/log.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Diagnostic detail.
    Debug,
    /// Normal operation worth noting.
    Info,
    /// Something unexpected that the stage handled.
    Warn,
    /// Something failed.
    Error,
}

/// One line of a worker's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the host received it, ms since the Unix epoch.
    pub at_ms: i64,
    /// Its severity.
    pub level: LogLevel,
    /// The text, at most [`LOG_LINE_BYTES`].
    pub message: String,
    /// Its number in the ring that holds it: 0 for the first line ever added, one more for
    /// each line after (dropped lines keep their numbers), so that a reader can ask for what
    /// is new since the last line it saw.
    pub seq: u64,
}

/// A bounded log of the most recent lines.
#[derive(Debug, Clone)]
pub struct LogRing {
    lines: VecDeque<LogLine>,
    capacity: usize,
    dropped: u64,
    next_seq: u64,
}

impl Default for LogRing {
    fn default() -> Self {
        LogRing::with_capacity(LOG_LINES)
    }
}

impl LogRing {
    /// A ring keeping the last `capacity` lines (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        LogRing { lines: VecDeque::with_capacity(capacity.min(64)), capacity, dropped: 0, next_seq: 0 }
    }

    /// Adds a line, dropping the oldest if full.
    pub fn push(&mut self, level: LogLevel, mut message: String) {
        if message.len() > LOG_LINE_BYTES {
            let mut cut = LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(LogLine { at_ms: now_ms(), level, message, seq: self.next_seq });
        self.next_seq += 1;
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> impl ExactSizeIterator<Item = &LogLine> {
        self.lines.iter()
    }

    /// Moves every line of `other` into this ring (oldest first, dropping past capacity) and
    /// adds up its drop count, leaving `other` empty.
    pub fn absorb(&mut self, other: &mut LogRing) {
        for mut line in other.lines.drain(..) {
            if self.lines.len() == self.capacity {
                self.lines.pop_front();
                self.dropped += 1;
            }
            line.seq = self.next_seq;
            self.next_seq += 1;
            self.lines.push_back(line);
        }
        self.dropped += std::mem::take(&mut other.dropped);
    }

    /// How many lines were dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_and_counts_the_rest() {
        let mut ring = LogRing::with_capacity(3);
        for i in 0..5 {
            ring.push(LogLevel::Info, format!("line {i}"));
        }
        let kept: Vec<_> = ring.lines().map(|l| l.message.as_str()).collect();
        assert_eq!(kept, ["line 2", "line 3", "line 4"]);
        assert_eq!(ring.dropped(), 2);
        let seqs: Vec<_> = ring.lines().map(|l| l.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
    }

    #[test]
    fn absorbed_lines_continue_the_numbering() {
        let mut worker = LogRing::with_capacity(3);
        for round in 0..3 {
            let mut instance = LogRing::with_capacity(2);
            instance.push(LogLevel::Info, format!("a{round}"));
            instance.push(LogLevel::Info, format!("b{round}"));
            worker.absorb(&mut instance);
        }
        let seqs: Vec<_> = worker.lines().map(|l| (l.seq, l.message.as_str())).collect();
        assert_eq!(seqs, [(3, "b1"), (4, "a2"), (5, "b2")]);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let mut ring = LogRing::default();
        ring.push(LogLevel::Warn, "é".repeat(LOG_LINE_BYTES));
        let line = &ring.lines().next().unwrap().message;
        assert!(line.len() <= LOG_LINE_BYTES + '…'.len_utf8());
        assert!(line.ends_with('…'));
    }
}

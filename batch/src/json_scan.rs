//! The common JSON line read without a general parser: one object of strings without escapes,
//! integers, decimal fractions, booleans and nulls, as log and metric events mostly are. It
//! scans the line once and fills the same [`Flat`] as [`crate::json_in`], which reads
//! everything else: a line with an escape, a nested object or array, an exponent, an integer of
//! more than 18 digits, `-0`, a syntax error or anything else unusual is handed back untouched
//! (`None`) and read there. Both paths therefore read every line alike (a property test checks
//! it), and errors keep `serde_json`'s messages.

use std::borrow::Cow;

use crate::json::TIMESTAMP;
use crate::json_in::{Flat, Scalar};

/// Reads `line` if it is a flat object of the common kinds of value; `None` otherwise.
pub(crate) fn read(line: &str) -> Option<Flat<'_>> {
    let mut s = Scanner { bytes: line.as_bytes(), at: 0 };
    let mut flat = Flat::with_capacity(16);
    s.skip_space();
    s.eat(b'{')?;
    s.skip_space();
    if s.peek() == Some(b'}') {
        s.at += 1;
        return s.end().then_some(flat);
    }
    loop {
        s.eat(b'"')?;
        let key = s.string(line)?;
        s.skip_space();
        s.eat(b':')?;
        s.skip_space();
        if key == TIMESTAMP {
            let Scalar::Int(ts) = s.value(line)? else { return None };
            flat.repeated |= flat.timestamp.replace(ts).is_some();
        } else {
            flat.repeated |= flat.has_key(key);
            let value = s.value(line)?;
            flat.fields.push((Cow::Borrowed(key), value));
        }
        s.skip_space();
        match s.next()? {
            b',' => s.skip_space(),
            b'}' => return s.end().then_some(flat),
            _ => return None,
        }
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    #[inline]
    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    #[inline]
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Nothing but whitespace left.
    fn end(&mut self) -> bool {
        self.skip_space();
        self.at == self.bytes.len()
    }

    /// The rest of a string whose opening quote is read: borrowed from `line` if it has no
    /// escape and no control character (those go to the general path).
    #[inline(always)]
    fn string(&mut self, line: &'a str) -> Option<&'a str> {
        let start = self.at;
        let rest = &self.bytes[start..];
        let len = special(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        // Both ends are ASCII bytes of a `str`: character boundaries.
        line.get(start..start + len)
    }

    // Inlined: returned through the stack, a value is stored in parts and loaded whole, which
    // stalls store-to-load forwarding (half of this module's time in a profile).
    #[inline(always)]
    fn value(&mut self, line: &'a str) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                Some(Scalar::Text(Cow::Borrowed(self.string(line)?)))
            }
            b't' => self.word(b"true", Scalar::Bool(true)),
            b'f' => self.word(b"false", Scalar::Bool(false)),
            b'n' => self.word(b"null", Scalar::Null),
            b'-' | b'0'..=b'9' => self.number(line),
            _ => None,
        }
    }

    #[inline(always)]
    fn word(&mut self, word: &[u8], value: Scalar<'a>) -> Option<Scalar<'a>> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| {
            self.at = end;
            value
        })
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`: an integer of at most 18 digits (so it fits an `i64`),
    /// or a decimal fraction, read to the nearest `f64` as `serde_json` (with
    /// `float_roundtrip`) reads it.
    #[inline(always)]
    fn number(&mut self, line: &str) -> Option<Scalar<'a>> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let digits_start = self.at;
        let mut value: i64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            value = value * 10 + i64::from(d - b'0');
            self.at += 1;
            if self.at - digits_start > 18 {
                return None;
            }
        }
        let digits = self.at - digits_start;
        if digits == 0 || (digits > 1 && self.bytes[digits_start] == b'0') {
            return None;
        }
        match self.peek() {
            Some(b'.') => {
                self.at += 1;
                let fraction = self.at;
                while let Some(b'0'..=b'9') = self.peek() {
                    self.at += 1;
                }
                if self.at == fraction || matches!(self.peek(), Some(b'e' | b'E')) {
                    return None;
                }
                let x: f64 = line.get(start..self.at)?.parse().ok()?;
                x.is_finite().then_some(Scalar::Float(x))
            }
            Some(b'e' | b'E') => None,
            // `serde_json` reads `-0` as the float -0.0.
            _ if negative && value == 0 => None,
            _ => Some(Scalar::Int(if negative { -value } else { value })),
        }
    }
}

/// The position of the first `"`, `\\` or control character in `bytes`, eight bytes at a time.
#[inline]
fn special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        // A byte is flagged if it is zero after the XOR (equal to the character) or below 0x20;
        // borrows may flag bytes after the first hit, never before it.
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let hits = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).map(|i| at + i)
}

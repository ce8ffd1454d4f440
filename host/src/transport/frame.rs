//! The wire format between agents: length-delimited frames.
//!
//! Every frame is `u32 length (LE)` — the bytes that follow — then one kind byte and its
//! body. Integers are little-endian. A batch travels as the very bytes its sender holds (an
//! archived batch), so the receiver validates it once and shares it from then on.
//!
//! | kind | body |
//! | --- | --- |
//! | 1 `hello` | sender agent id (UTF-8) |
//! | 2 `open` | stream id u32, stage u32, worker index u32, job id (UTF-8) |
//! | 3 `data` | stream id u32, archived batch |
//! | 4 `credit` | stream id u32, batches u32 |
//! | 5 `subscribe` | stream id u32, job id length u32, job id (UTF-8), query (UTF-8, may be empty) |
//! | 6 `end` | stream id u32, why (UTF-8) |
//!
//! A connection that carries a job's workers' input starts with `hello` and sends `open` and
//! `data`, and the receiver answers `credit`. A connection that pulls a job's output
//! ([`super::tap`]) starts with `subscribe` instead: the dialer sends `credit`, and the agent
//! it dialled answers `data` and, when the output ends there, `end`.

use std::io::{self, Read, Write};

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame on a connection: who is sending.
    Hello {
        /// The sending agent's id.
        agent: String,
    },
    /// Names a stream: batches for worker `index` of stage `stage` of job `job`.
    Open {
        /// Stream id, chosen by the sender, unique on the connection.
        id: u32,
        /// The stage.
        stage: u32,
        /// The worker slot.
        index: u32,
        /// The job.
        job: String,
    },
    /// One batch on a stream.
    Data {
        /// The stream.
        id: u32,
        /// The archived batch.
        bytes: Vec<u8>,
    },
    /// The receiver has taken `batches` more batches of a stream off the wire.
    Credit {
        /// The stream.
        id: u32,
        /// How many.
        batches: u32,
    },
    /// Asks for the output of job `job` made on the agent dialled, after `query`.
    Subscribe {
        /// Stream id of the batches that answer.
        id: u32,
        /// The job.
        job: String,
        /// A query (`squilla_query`) applied before anything is sent; empty: none.
        query: String,
    },
    /// The stream has ended, and why.
    End {
        /// The stream.
        id: u32,
        /// Why, for people.
        message: String,
    },
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn u32_at(body: &[u8], at: usize) -> io::Result<u32> {
    body.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| invalid("frame too short"))
}

fn text(body: &[u8]) -> io::Result<String> {
    String::from_utf8(body.to_vec()).map_err(|_| invalid("frame text is not UTF-8"))
}

/// Writes the header of a `data` frame whose batch is `len` bytes; the caller writes the
/// batch itself right after (so that it is never copied into a frame buffer).
pub fn write_data_header(out: &mut impl Write, id: u32, len: usize) -> io::Result<()> {
    let total = u32::try_from(len + 5).map_err(|_| invalid("batch too large for a frame"))?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(&[3])?;
    out.write_all(&id.to_le_bytes())
}

/// Writes a frame other than `data` (see [`write_data_header`]).
pub fn write(out: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let mut body = Vec::with_capacity(32);
    match frame {
        Frame::Hello { agent } => {
            body.push(1);
            body.extend_from_slice(agent.as_bytes());
        }
        Frame::Open { id, stage, index, job } => {
            body.push(2);
            for n in [id, stage, index] {
                body.extend_from_slice(&n.to_le_bytes());
            }
            body.extend_from_slice(job.as_bytes());
        }
        Frame::Data { id, bytes } => {
            write_data_header(out, *id, bytes.len())?;
            return out.write_all(bytes);
        }
        Frame::Credit { id, batches } => {
            body.push(4);
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&batches.to_le_bytes());
        }
        Frame::Subscribe { id, job, query } => {
            body.push(5);
            body.extend_from_slice(&id.to_le_bytes());
            let len = u32::try_from(job.len()).map_err(|_| invalid("job id too long"))?;
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(job.as_bytes());
            body.extend_from_slice(query.as_bytes());
        }
        Frame::End { id, message } => {
            body.push(6);
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(message.as_bytes());
        }
    }
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(&body)
}

/// Reads one frame; frames longer than `max_bytes` are refused (the connection is then
/// unusable: the caller closes it).
pub fn read(input: &mut impl Read, max_bytes: usize) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > max_bytes {
        return Err(invalid(format!("frame of {len} bytes (limit {max_bytes})")));
    }
    let mut kind = [0u8; 1];
    input.read_exact(&mut kind)?;
    let mut body = vec![0u8; len - 1];
    input.read_exact(&mut body)?;
    match kind[0] {
        1 => Ok(Frame::Hello { agent: text(&body)? }),
        2 => Ok(Frame::Open {
            id: u32_at(&body, 0)?,
            stage: u32_at(&body, 4)?,
            index: u32_at(&body, 8)?,
            job: text(&body[12.min(body.len())..])?,
        }),
        3 => {
            let id = u32_at(&body, 0)?;
            body.drain(..4);
            Ok(Frame::Data { id, bytes: body })
        }
        4 => Ok(Frame::Credit { id: u32_at(&body, 0)?, batches: u32_at(&body, 4)? }),
        5 => {
            let id = u32_at(&body, 0)?;
            let len = u32_at(&body, 4)? as usize;
            let job = body.get(8..8usize.saturating_add(len)).ok_or_else(|| invalid("frame too short"))?;
            Ok(Frame::Subscribe { id, job: text(job)?, query: text(&body[8 + len..])? })
        }
        6 => Ok(Frame::End { id: u32_at(&body, 0)?, message: text(&body[4..])? }),
        other => Err(invalid(format!("unknown frame kind {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello { agent: "agent-1".into() },
            Frame::Open { id: 7, stage: 2, index: 3, job: "errors-1".into() },
            Frame::Data { id: 7, bytes: vec![1, 2, 3, 4, 5] },
            Frame::Credit { id: 7, batches: 16 },
            Frame::Subscribe { id: 1, job: "errors-1".into(), query: "SELECT * WHERE status >= 500".into() },
            Frame::Subscribe { id: 2, job: "errors-1".into(), query: String::new() },
            Frame::End { id: 1, message: "the job stopped here".into() },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            write(&mut wire, f).unwrap();
        }
        let mut input = wire.as_slice();
        for f in &frames {
            assert_eq!(&read(&mut input, 1 << 20).unwrap(), f);
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut too_long = Vec::new();
        write(&mut too_long, &Frame::Data { id: 1, bytes: vec![0; 100] }).unwrap();
        assert!(read(&mut too_long.as_slice(), 50).unwrap_err().to_string().contains("limit 50"));
        let unknown = [2u8, 0, 0, 0, 9, 0];
        assert!(read(&mut unknown.as_slice(), 50).unwrap_err().to_string().contains("kind 9"));
        let short = [2u8, 0, 0, 0, 4, 0];
        assert!(read(&mut short.as_slice(), 50).is_err());
        // A subscribe whose job length points past its end.
        let mut lying = vec![13u8, 0, 0, 0, 5, 1, 0, 0, 0, 200, 0, 0, 0];
        lying.extend_from_slice(b"abcd");
        assert!(read(&mut lying.as_slice(), 50).unwrap_err().to_string().contains("too short"));
    }
}

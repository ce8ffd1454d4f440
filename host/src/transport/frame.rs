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
//! | 7 `state` | stream id u32, groups u32, group u32 × groups, parts u32, (group u32, length u32, bytes) × parts |
//!
//! A connection that carries a job's workers' input starts with `hello` and sends `open` and
//! `data`, and the receiver answers `credit`. A connection that pulls a job's output
//! ([`super::tap`]) starts with `subscribe` instead: the dialer sends `credit`, and the agent
//! it dialled answers `data` and, when the output ends there, `end`. `state` carries key-group
//! state to the worker of a stream (see `pipeline::handoff`) outside the credit that paces
//! `data`; a parcel larger than a frame is cut into several, the groups it hands over listed
//! in the last.

use std::io::{self, Read, Write};

use crate::pipeline::StateParcel;

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
    /// Key-group state for the worker of a stream.
    State {
        /// The stream.
        id: u32,
        /// The state.
        parcel: StateParcel,
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
        Frame::State { id, parcel } => {
            body.push(7);
            body.extend_from_slice(&id.to_le_bytes());
            let count = |n: usize| u32::try_from(n).map_err(|_| invalid("state parcel too large"));
            body.extend_from_slice(&count(parcel.groups.len())?.to_le_bytes());
            for g in &parcel.groups {
                body.extend_from_slice(&g.to_le_bytes());
            }
            body.extend_from_slice(&count(parcel.parts.len())?.to_le_bytes());
            for (g, bytes) in &parcel.parts {
                body.extend_from_slice(&g.to_le_bytes());
                body.extend_from_slice(&count(bytes.len())?.to_le_bytes());
                body.extend_from_slice(bytes);
            }
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
        7 => read_state(&body),
        other => Err(invalid(format!("unknown frame kind {other}"))),
    }
}

fn read_state(body: &[u8]) -> io::Result<Frame> {
    let id = u32_at(body, 0)?;
    let groups = u32_at(body, 4)? as usize;
    let mut at = 8;
    // Never trust a count for an allocation: every entry takes at least 4 bytes of the body.
    let mut parcel = StateParcel { groups: Vec::with_capacity(groups.min(body.len() / 4)), parts: Vec::new() };
    for _ in 0..groups {
        parcel.groups.push(u32_at(body, at)?);
        at += 4;
    }
    let parts = u32_at(body, at)? as usize;
    at += 4;
    for _ in 0..parts.min(body.len() / 8 + 1) {
        let group = u32_at(body, at)?;
        let len = u32_at(body, at + 4)? as usize;
        at += 8;
        let bytes = body.get(at..at.saturating_add(len)).ok_or_else(|| invalid("frame too short"))?;
        parcel.parts.push((group, bytes.to_vec()));
        at += len;
    }
    if parcel.parts.len() != parts || at != body.len() {
        return Err(invalid("state frame does not add up"));
    }
    Ok(Frame::State { id, parcel })
}

/// Writes `parcel` for stream `id` in frames of at most about `max_bytes`: parts go in order,
/// as many per frame as fit, and the last frame lists the groups handed over. A single part
/// larger than a frame cannot travel: it is left out and counted in the result.
pub fn write_state(out: &mut impl Write, id: u32, parcel: StateParcel, max_bytes: usize) -> io::Result<usize> {
    let budget = max_bytes.saturating_sub(64 + parcel.groups.len() * 4).max(1);
    let StateParcel { groups, parts } = parcel;
    let mut too_large = 0;
    let mut chunk = Vec::new();
    let mut size = 0;
    for (group, bytes) in parts {
        if bytes.len() + 8 > budget {
            too_large += 1;
            continue;
        }
        if size + bytes.len() + 8 > budget {
            let parcel = StateParcel { groups: Vec::new(), parts: std::mem::take(&mut chunk) };
            write(out, &Frame::State { id, parcel })?;
            size = 0;
        }
        size += bytes.len() + 8;
        chunk.push((group, bytes));
    }
    write(out, &Frame::State { id, parcel: StateParcel { groups, parts: chunk } })?;
    Ok(too_large)
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
            Frame::State { id: 3, parcel: StateParcel { groups: vec![1, 4095], parts: vec![(1, vec![9, 8, 7])] } },
            Frame::State { id: 3, parcel: StateParcel::default() },
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
        // A state frame whose part length points past its end, or that counts more parts than
        // it has.
        let mut wire = Vec::new();
        let parcel = StateParcel { groups: vec![2], parts: vec![(2, vec![1, 2, 3])] };
        write(&mut wire, &Frame::State { id: 1, parcel }).unwrap();
        let mut cut = wire.clone();
        cut.truncate(wire.len() - 1);
        let len = (cut.len() - 4) as u32;
        cut[..4].copy_from_slice(&len.to_le_bytes());
        assert!(read(&mut cut.as_slice(), 1 << 20).is_err());
        // Header: length 0..4, kind 4, id 5..9, groups 9..13, group 13..17, parts 17..21.
        let mut more = wire.clone();
        more[17] = 2;
        assert!(read(&mut more.as_slice(), 1 << 20).unwrap_err().to_string().contains("too short"));
        let mut fewer = wire.clone();
        fewer[17] = 0;
        assert!(read(&mut fewer.as_slice(), 1 << 20).unwrap_err().to_string().contains("add up"));
    }

    #[test]
    fn a_large_parcel_travels_in_several_frames_with_its_groups_in_the_last() {
        let parts: Vec<(u32, Vec<u8>)> = (0..10).map(|g| (g, vec![g as u8; 400])).collect();
        let parcel = StateParcel { groups: (0..12).collect(), parts: parts.clone() };
        let mut wire = Vec::new();
        assert_eq!(write_state(&mut wire, 5, parcel, 1_000).unwrap(), 0);
        let mut input = wire.as_slice();
        let mut frames = Vec::new();
        while !input.is_empty() {
            match read(&mut input, 1_000).unwrap() {
                Frame::State { id: 5, parcel } => frames.push(parcel),
                other => panic!("{other:?}"),
            }
        }
        assert!(frames.len() > 2);
        assert!(frames[..frames.len() - 1].iter().all(|p| p.groups.is_empty()));
        assert_eq!(frames.last().unwrap().groups, (0..12).collect::<Vec<_>>());
        assert_eq!(frames.into_iter().flat_map(|p| p.parts).collect::<Vec<_>>(), parts);
        // A part larger than a frame is left out, and said so.
        let parcel = StateParcel { groups: vec![1], parts: vec![(1, vec![0; 5_000])] };
        assert_eq!(write_state(&mut Vec::new(), 5, parcel, 1_000).unwrap(), 1);
    }
}

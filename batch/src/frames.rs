//! Several archived batches in one body: each preceded by its length in bytes (`u32`,
//! little-endian). A gateway or master forwards one ingest request's batches to the agent
//! running the job's source in one such body ([`CONTENT_TYPE`]), one round trip instead of one
//! per batch.

use crate::BatchError;

/// The content type of a body of framed batches.
pub const CONTENT_TYPE: &str = "application/vnd.squilla.batches";

/// Appends `batch` to `out` as one frame.
pub fn push(out: &mut Vec<u8>, batch: &[u8]) -> Result<(), BatchError> {
    let len = u32::try_from(batch.len())
        .map_err(|_| BatchError::Encode { detail: format!("a framed batch is at most 4 GiB, not {}", batch.len()) })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(batch);
    Ok(())
}

/// The batches (still to validate) of a framed `body`, in order; `None` if the frames do not
/// add up to the body exactly.
pub fn split(body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut batches = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        if len > tail.len() {
            return None;
        }
        let (batch, tail) = tail.split_at(len);
        batches.push(batch);
        rest = tail;
    }
    Some(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_back_into_their_batches_and_bad_frames_are_refused() {
        let mut body = Vec::new();
        for batch in [&b"abc"[..], b"", b"defgh"] {
            push(&mut body, batch).unwrap();
        }
        assert_eq!(split(&body).unwrap(), vec![&b"abc"[..], b"", b"defgh"]);
        assert_eq!(split(&[]).unwrap(), Vec::<&[u8]>::new());
        assert!(split(&body[..body.len() - 1]).is_none(), "a frame cut short");
        assert!(split(&body[..2]).is_none(), "a length cut short");
        assert!(split(&[255, 255, 255, 255, 0]).is_none(), "a length past the end");
    }
}

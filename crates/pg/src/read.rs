//! Streaming a stored body: one chunk row per database round trip, so a
//! `RETR` of a 25 MB message holds one 256 KiB chunk at a time.

use std::io::{self, Read};

use postoffice_store::StoreError;
use tokio_postgres::types::Type;

use crate::store::Shared;
use std::sync::Arc;

/// The chunk with sequence number `seq` of message `message_id`, `None`
/// when there is none (the message was deleted meanwhile).
pub(crate) fn fetch_chunk(
    shared: &Shared,
    message_id: i64,
    seq: i32,
) -> Result<Option<Vec<u8>>, StoreError> {
    shared.run(
        || format!("reading part {seq} of message {message_id}"),
        |c| {
            Ok(c.query_typed_opt(
                "SELECT data FROM message_chunks WHERE message_id = $1 AND seq = $2",
                &[(&message_id, Type::INT8), (&seq, Type::INT4)],
            )?
            .map(|row| row.get(0)))
        },
    )
}

/// A message body read chunk by chunk. It knows the size, so the last
/// chunk costs no extra query to find the end. Takes a pooled connection
/// only for each fetch: a slow client does not keep one busy.
pub(crate) struct ChunkReader {
    shared: Arc<Shared>,
    message_id: i64,
    next_seq: i32,
    /// Octets not fetched yet.
    unfetched: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    /// A reader of the message `message_id` of `size` octets whose first
    /// chunk (`first`, sequence 0) has been fetched already.
    pub(crate) fn new(shared: Arc<Shared>, message_id: i64, size: u64, first: Vec<u8>) -> Self {
        ChunkReader {
            shared,
            message_id,
            next_seq: 1,
            unfetched: size.saturating_sub(first.len() as u64),
            buf: first,
            pos: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.buf.len() {
            if self.unfetched == 0 {
                return Ok(0);
            }
            // Free the old chunk before the next one arrives.
            self.buf = Vec::new();
            self.pos = 0;
            let chunk = fetch_chunk(&self.shared, self.message_id, self.next_seq)
                .map_err(io::Error::other)?
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "message {} was deleted while it was being read",
                            self.message_id
                        ),
                    )
                })?;
            if chunk.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("message {} has an empty part", self.message_id),
                ));
            }
            self.next_seq += 1;
            self.unfetched = self.unfetched.saturating_sub(chunk.len() as u64);
            self.buf = chunk;
        }
        let avail = &self.buf[self.pos..];
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}

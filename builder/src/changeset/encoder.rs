//! [`SetEncoder`]: a change set encoded record by record into one buffer,
//! so a sender never holds the records and their encoding at once, and can
//! reuse the buffer of an acknowledged set for the next one.

use super::codec::encode_record;
use super::*;

/// A change set being encoded: records are appended as they come; the
/// header (sequence number, time, count, version) and the trailing
/// checksum are written by [`SetEncoder::finish`]. The bytes are exactly
/// those of [`ChangeSet::encode`] for the same records.
#[derive(Debug)]
pub struct SetEncoder {
    buf: Vec<u8>,
    count: usize,
    /// Byte ranges of File records' data (left out of the checksum).
    skip: Vec<(usize, usize)>,
}

impl Default for SetEncoder {
    fn default() -> Self {
        Self::with_buffer(Vec::new())
    }
}

impl SetEncoder {
    /// An empty set encoded into `buf` (cleared; its capacity is kept).
    pub fn with_buffer(mut buf: Vec<u8>) -> SetEncoder {
        buf.clear();
        buf.resize(HEADER, 0);
        SetEncoder {
            buf,
            count: 0,
            skip: Vec::new(),
        }
    }

    /// Append one record. On an error (a field over its limit) nothing of
    /// the record stays in the set.
    pub fn push(&mut self, r: &Record) -> Result<(), ChangeSetError> {
        limit("record count", self.count + 1, MAX_RECORDS)?;
        let at = self.buf.len();
        if let Err(e) = encode_record(&mut self.buf, r) {
            self.buf.truncate(at);
            return Err(e);
        }
        if let Record::File { data, .. } = r {
            // The data sits right before the record's 32-byte digest.
            let end = self.buf.len() - 32;
            self.skip.push((end - data.len(), end));
        }
        self.count += 1;
        Ok(())
    }

    /// Records appended.
    pub fn records(&self) -> usize {
        self.count
    }

    /// Whether no record was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes encoded so far (header included, checksum not).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The finished set: header filled in, checksum appended.
    pub fn finish(mut self, seq: u64, created_unix_ms: i64) -> Vec<u8> {
        let version = VERSION;
        let mut head = [0u8; HEADER];
        head[..4].copy_from_slice(MAGIC);
        head[4] = version;
        head[8..16].copy_from_slice(&seq.to_be_bytes());
        head[16..24].copy_from_slice(&created_unix_ms.to_be_bytes());
        head[24..28].copy_from_slice(&(self.count as u32).to_be_bytes());
        self.buf[..HEADER].copy_from_slice(&head);
        let sum = checksum(&self.buf, &self.skip);
        self.buf.extend_from_slice(&sum);
        self.buf
    }
}

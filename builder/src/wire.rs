//! One bounded reader for standin's binary formats (change sets, mirror
//! batches): every read is checked against the bytes that remain, every
//! length and count against its limit (and, for counts, against what the
//! remaining bytes can hold) before anything is allocated; LEB128 varints
//! longer than 10 bytes, overflowing 64 bits or overlong are refused.
//! Errors name the field.

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what}: {need} bytes needed, {left} left (truncated)")]
    Truncated {
        what: &'static str,
        need: u64,
        left: usize,
    },
    #[error("{what} {len} is more than the limit {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{what} {n} is more than the {left} bytes left can hold")]
    TooMany {
        what: &'static str,
        n: u64,
        left: usize,
    },
    #[error("{what}: {why}")]
    Varint {
        what: &'static str,
        why: &'static str,
    },
    #[error("{what} {v} does not fit 32 bits")]
    NotU32 { what: &'static str, v: u64 },
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// A cursor over a byte slice with bounded reads.
#[derive(Debug, Clone)]
pub struct WireReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> WireReader<'a> {
    /// Read `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Read `buf` from `pos` (at most its length).
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Self {
            buf,
            pos: pos.min(buf.len()),
        }
    }

    /// Bytes read so far from the start of the buffer.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.left() {
            return Err(WireError::Truncated {
                what,
                need: n as u64,
                left: self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    /// A big-endian u32.
    pub fn u32_be(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    /// A big-endian u64.
    pub fn u64_be(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    /// An unsigned LEB128 varint (canonical, at most 10 bytes).
    pub fn var(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            if i == 9 && b > 1 {
                let why = "varint overflows 64 bits";
                return Err(WireError::Varint { what, why });
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    let why = "overlong varint";
                    return Err(WireError::Varint { what, why });
                }
                return Ok(v);
            }
        }
        let why = "varint longer than 10 bytes";
        Err(WireError::Varint { what, why })
    }

    /// A varint that fits 32 bits.
    pub fn var32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let v = self.var(what)?;
        u32::try_from(v).map_err(|_| WireError::NotU32 { what, v })
    }

    /// A zigzag-encoded signed varint.
    pub fn vari(&mut self, what: &'static str) -> Result<i64, WireError> {
        let u = self.var(what)?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// Check a length or count `n` against `max` and against the bytes
    /// left, each item taking at least `min_each` bytes.
    pub fn check_count(
        &self,
        what: &'static str,
        n: u64,
        max: usize,
        min_each: usize,
    ) -> Result<usize, WireError> {
        if n > max as u64 {
            return Err(WireError::TooLong {
                what,
                len: n,
                max: max as u64,
            });
        }
        if n.saturating_mul(min_each as u64) > self.left() as u64 {
            return Err(WireError::TooMany {
                what,
                n,
                left: self.left(),
            });
        }
        Ok(n as usize)
    }

    /// A varint count, checked as [`WireReader::check_count`].
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_each: usize,
    ) -> Result<usize, WireError> {
        let n = self.var(what)?;
        self.check_count(what, n, max, min_each)
    }

    /// Bytes with a varint length of at most `max`.
    pub fn bytes_var(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let n = self.count(what, max, 1)?;
        self.take(n, what)
    }

    /// Bytes with a big-endian u32 length of at most `max` (the limit is
    /// checked first, then the bytes left).
    pub fn bytes_u32(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let n = self.u32_be(what)? as u64;
        if n > max as u64 {
            return Err(WireError::TooLong {
                what,
                len: n,
                max: max as u64,
            });
        }
        self.take(n as usize, what)
    }

    /// Nothing may be left.
    pub fn end(&self) -> Result<(), WireError> {
        match self.left() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reads_refuse_hostile_input() {
        let mut r = WireReader::new(&[0x96, 0x01, 5, 1, 2]);
        assert_eq!(r.var("v").unwrap(), 150);
        assert!(matches!(
            r.count("n", 4, 1),
            Err(WireError::TooLong { len: 5, .. })
        ));
        let mut r = WireReader::new(&[3, 1, 2]);
        assert!(matches!(
            r.count("n", 10, 1),
            Err(WireError::TooMany { n: 3, left: 2, .. })
        ));
        let e = WireReader::new(&[0x80, 0x00]).var("x").unwrap_err();
        assert!(e.to_string().contains("overlong"), "{e}");
        let e = WireReader::new(&[0xff; 11]).var("x").unwrap_err();
        assert!(e.to_string().contains("varint"), "{e}");
        let e = WireReader::new(&[0, 0, 0, 9, 1])
            .bytes_u32("b", 100)
            .unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = WireReader::new(&[0, 0, 1, 0])
            .bytes_u32("b", 100)
            .unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        assert_eq!(
            WireReader::at(&[1, 2], 1).end(),
            Err(WireError::Trailing(1))
        );
        assert_eq!(WireReader::new(&[1, 2]).vari("i").unwrap(), -1);
    }
}

//! Sparse files: reading data extents, and the GNU PAX sparse 1.0 map that
//! precedes the data in the archive (`N\n` then `offset\nlength\n` pairs,
//! padded with NULs to a 512-byte block).

use std::io::{self, Read, Seek, SeekFrom};

/// Reads `len` bytes starting at `offset` of a file; past EOF (the file
/// shrank) it yields zeros so the archive stays consistent with its header.
pub struct ExtentReader<'a, R> {
    inner: &'a mut R,
    left: u64,
    eof: bool,
}

impl<'a, R: Read + Seek> ExtentReader<'a, R> {
    /// Seek to `offset` and read `len` bytes from there.
    pub fn new(inner: &'a mut R, offset: u64, len: u64) -> io::Result<Self> {
        inner.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            inner,
            left: len,
            eof: false,
        })
    }
}

impl<R: Read> Read for ExtentReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = if self.eof {
            0
        } else {
            loop {
                match self.inner.read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        let n = if n == 0 {
            self.eof = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Encode the sparse 1.0 map for data extents of a file of `size` bytes,
/// padded to whole blocks. A trailing zero-length extent at `size` is added
/// when the file ends in a hole (GNU tar sets the length from it).
pub fn encode_map(extents: &[(u64, u64)], size: u64) -> Vec<u8> {
    let mut list: Vec<(u64, u64)> = extents.to_vec();
    let end = list.last().map(|&(o, l)| o + l).unwrap_or(0);
    if end < size || list.is_empty() {
        list.push((size, 0));
    }
    let mut out = format!("{}\n", list.len()).into_bytes();
    for (o, l) in list {
        out.extend_from_slice(format!("{o}\n{l}\n").as_bytes());
    }
    let padded = out.len().div_ceil(512) * 512;
    out.resize(padded, 0);
    out
}

/// Decode a sparse 1.0 map from the start of the data area. Returns the data
/// extents (zero-length ones dropped) and the bytes the map occupied.
pub fn decode_map<R: Read>(r: &mut R) -> io::Result<(Vec<(u64, u64)>, u64)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad sparse map: {m}"));
    let mut consumed = 0u64;
    let mut block = [0u8; 512];
    let mut pos = 512usize;
    let mut next_number = |consumed: &mut u64| -> io::Result<u64> {
        let mut digits = String::new();
        loop {
            if pos == 512 {
                r.read_exact(&mut block)?;
                *consumed += 512;
                pos = 0;
            }
            let c = block[pos];
            pos += 1;
            if c == b'\n' {
                break;
            }
            if !c.is_ascii_digit() || digits.len() > 20 {
                return Err(bad("not a number"));
            }
            digits.push(c as char);
        }
        digits.parse::<u64>().map_err(|_| bad("not a number"))
    };
    let n = next_number(&mut consumed)?;
    if n > 1 << 24 {
        return Err(bad("too many extents"));
    }
    let mut extents = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let o = next_number(&mut consumed)?;
        let l = next_number(&mut consumed)?;
        if l > 0 {
            extents.push((o, l));
        }
    }
    Ok((extents, consumed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trips() {
        let ext = vec![(0, 4096), (1 << 20, 8192)];
        let m = encode_map(&ext, 4 << 20);
        assert_eq!(m.len() % 512, 0);
        let (back, used) = decode_map(&mut &m[..]).unwrap();
        assert_eq!(back, ext);
        assert_eq!(used, m.len() as u64);
        let (empty, _) = decode_map(&mut &encode_map(&[], 100)[..]).unwrap();
        assert!(empty.is_empty());
    }
}

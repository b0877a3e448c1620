//! Streaming PAX tar reader: yields entries as [`Entry`] values (no
//! `sha256`) and reads each entry's data through `Read` on the reader.
//!
//! Hardlink entries come with `link` set (kind and size are not in a tar
//! hardlink header; they are reported as `File`, size 0). For sparse files
//! (GNU PAX sparse 1.0) `sparse` holds the data extents and the data read is
//! the extents' bytes back to back.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::sparse::decode_map;
use super::tar::{self, flag, Header, BLOCK};
use crate::entry::{Entry, Kind, Xattr};

/// Reads a tar stream entry by entry.
pub struct TarReader<R: Read> {
    inner: R,
    remaining: u64,
    pad: u64,
    ended: bool,
    current: Vec<u8>,
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

fn truncated(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the archive is truncated ({what}); it was cut off while being written or copied"),
    )
}

impl<R: Read> TarReader<R> {
    /// Read a tar stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            remaining: 0,
            pad: 0,
            ended: false,
            current: Vec::new(),
        }
    }

    /// Bytes of the current entry's data not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if copied != n {
            let name = crate::entry::display_path(&self.current);
            return Err(truncated(&format!("ends inside {name}")));
        }
        Ok(())
    }

    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool> {
        let mut got = 0;
        while got < BLOCK {
            match self.inner.read(&mut block[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match got {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(truncated("ends inside a header")),
        }
    }

    fn read_data(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > 64 << 20 {
            return Err(invalid(format!(
                "extended header of {size} bytes is too large"
            )));
        }
        let mut data = vec![0u8; size as usize];
        self.inner
            .read_exact(&mut data)
            .map_err(|_| truncated("ends inside an extended header"))?;
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.skip(pad)?;
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive. Unread data of
    /// the previous entry is skipped. Reads through to the end of the
    /// stream after the end marker, so a compressed stream's checksum is
    /// verified.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        let skip = self.remaining + self.pad;
        self.skip(skip)?;
        self.remaining = 0;
        self.pad = 0;
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut block = [0u8; BLOCK];
        loop {
            if !self.read_block(&mut block)? {
                return Err(truncated("no end-of-archive marker"));
            }
            let h = match Header::decode(&block)? {
                Some(h) => h,
                None => {
                    // End of archive: the rest must be zeros.
                    self.ended = true;
                    let mut rest = Vec::new();
                    self.inner.read_to_end(&mut rest)?;
                    if rest.iter().any(|&b| b != 0) {
                        return Err(invalid("data after the end-of-archive marker".into()));
                    }
                    return Ok(None);
                }
            };
            match h.typeflag {
                flag::PAX_LOCAL => pax.extend(tar::parse_pax(&self.read_data(h.size)?)?),
                flag::PAX_GLOBAL => {
                    self.read_data(h.size)?;
                }
                flag::GNU_LONGNAME => {
                    let mut d = self.read_data(h.size)?;
                    d.truncate(d.iter().position(|&c| c == 0).unwrap_or(d.len()));
                    long_name = Some(d);
                }
                flag::GNU_LONGLINK => {
                    let mut d = self.read_data(h.size)?;
                    d.truncate(d.iter().position(|&c| c == 0).unwrap_or(d.len()));
                    long_link = Some(d);
                }
                _ => return self.make_entry(h, pax, long_name, long_link).map(Some),
            }
        }
    }

    fn make_entry(
        &mut self,
        h: Header,
        pax: Vec<(Vec<u8>, Vec<u8>)>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> io::Result<Entry> {
        let mut name = long_name.unwrap_or(h.name.clone());
        let mut linkname = long_link.unwrap_or(h.linkname.clone());
        let (mut uid, mut gid, mut size) = (h.uid, h.gid, h.size);
        let mut mtime_ns = h.mtime.saturating_mul(1_000_000_000);
        let mut xattrs = BTreeMap::new();
        let (mut sp_major, mut sp_minor) = (None, None);
        let (mut sp_name, mut sp_size) = (None, None);
        let num = |v: &[u8], k: &str| -> io::Result<u64> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| invalid(format!("bad PAX {k} value")))
        };
        for (k, v) in pax {
            match k.as_slice() {
                b"path" => name = v,
                b"linkpath" => linkname = v,
                b"uid" => uid = num(&v, "uid")?,
                b"gid" => gid = num(&v, "gid")?,
                b"size" => size = num(&v, "size")?,
                b"mtime" => mtime_ns = tar::parse_time(&v)?,
                b"GNU.sparse.major" => sp_major = Some(num(&v, "GNU.sparse.major")?),
                b"GNU.sparse.minor" => sp_minor = Some(num(&v, "GNU.sparse.minor")?),
                b"GNU.sparse.name" => sp_name = Some(v),
                b"GNU.sparse.realsize" => sp_size = Some(num(&v, "GNU.sparse.realsize")?),
                _ => {
                    if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.insert(Xattr(tar::decode_xattr_name(x)), Xattr(v));
                    }
                }
            }
        }
        if let Some(n) = sp_name {
            name = n;
        }
        let path = normalize(&name);
        self.current = path.clone();
        let u32_of = |v: u64, what: &str| -> io::Result<u32> {
            u32::try_from(v).map_err(|_| {
                invalid(format!(
                    "{what} {v} of {} is out of range",
                    crate::entry::display_path(&path)
                ))
            })
        };
        let mut e = Entry {
            path: path.clone(),
            kind: Kind::File,
            mode: h.mode & 0o7777,
            uid: u32_of(uid, "uid")?,
            gid: u32_of(gid, "gid")?,
            mtime_ns,
            size: 0,
            xattrs,
            target: None,
            link: None,
            rdev: None,
            sparse: None,
            sha256: None,
        };
        let data_size = match h.typeflag {
            flag::FILE | flag::FILE_OLD | flag::CONTIGUOUS => {
                e.size = size;
                size
            }
            flag::HARDLINK => {
                e.link = Some(normalize(&linkname));
                size
            }
            flag::SYMLINK => {
                e.kind = Kind::Symlink;
                e.size = linkname.len() as u64;
                e.target = Some(linkname);
                0
            }
            flag::DIR => {
                e.kind = Kind::Dir;
                0
            }
            flag::FIFO => {
                e.kind = Kind::Fifo;
                0
            }
            flag::CHAR | flag::BLOCK => {
                e.kind = if h.typeflag == flag::CHAR {
                    Kind::Char
                } else {
                    Kind::Block
                };
                e.rdev = Some((h.devmajor, h.devminor));
                0
            }
            other => {
                return Err(invalid(format!(
                    "entry {} has unsupported tar type {:?}",
                    e.display_path(),
                    other as char
                )))
            }
        };
        self.remaining = data_size;
        self.pad = (BLOCK as u64 - data_size % BLOCK as u64) % BLOCK as u64;
        if sp_major.is_some() || sp_minor.is_some() {
            if (sp_major, sp_minor) != (Some(1), Some(0)) {
                return Err(invalid(format!(
                    "entry {} uses a GNU sparse format other than 1.0",
                    e.display_path()
                )));
            }
            let (ext, used) =
                decode_map(&mut (&mut self.inner).take(self.remaining)).map_err(|err| {
                    invalid(format!("reading sparse map of {}: {err}", e.display_path()))
                })?;
            self.remaining -= used;
            let data: u64 = ext.iter().map(|p| p.1).sum();
            if data != self.remaining {
                return Err(invalid(format!(
                    "sparse map of {} does not match its data size",
                    e.display_path()
                )));
            }
            e.size = sp_size.unwrap_or(0);
            e.sparse = Some(ext);
        }
        Ok(e)
    }
}

/// Strip leading `./` and trailing `/`; `.`/`./` is the root (empty path).
/// Absolute paths and `..` are kept so that the writer can refuse them by name.
pub fn normalize(name: &[u8]) -> Vec<u8> {
    let mut n = name;
    while let Some(r) = n.strip_prefix(b"./") {
        n = r;
    }
    while n.len() > 1 && n.ends_with(b"/") {
        n = &n[..n.len() - 1];
    }
    if n == b"." || n == b"./" {
        return Vec::new();
    }
    n.to_vec()
}

impl<R: Read> Read for TarReader<R> {
    /// Read the current entry's data.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            let name = crate::entry::display_path(&self.current);
            return Err(truncated(&format!("ends inside {name}")));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

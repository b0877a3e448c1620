//! Writing entries as PAX tar, hashing file content in the same read pass.

use std::fs::File;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::sparse::{encode_map, ExtentReader};
use super::tar::{self, flag, pax_record, Header, BLOCK};
use crate::entry::{Entry, Kind};
use crate::hash::{hash_zeros, BUF_SIZE};

/// Largest value of a 7-digit octal field (uid, gid).
const MAX_ID: u64 = 0o7777777;
/// Largest value of an 11-digit octal field (size, mtime).
const MAX_11: u64 = 0o77777777777;

/// A streaming PAX tar writer.
pub struct TarWriter<W: Write> {
    out: W,
    written: u64,
    buf: Vec<u8>,
}

/// The name an entry has inside the archive.
pub fn tar_name(e: &Entry) -> Vec<u8> {
    if e.path.is_empty() {
        return b"./".to_vec();
    }
    let mut n = e.path.clone();
    if e.kind == Kind::Dir && e.link.is_none() {
        n.push(b'/');
    }
    n
}

impl<W: Write> TarWriter<W> {
    /// Start an archive on `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            buf: vec![0u8; BUF_SIZE],
        }
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % BLOCK as u64) as usize;
        if rem != 0 {
            let zeros = [0u8; BLOCK];
            self.put(&zeros[..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Append one entry. `file` is the open file for a regular file that is
    /// not a hardlink member; its content is read once, written and hashed.
    /// Returns the content sha256 (hex) for regular files.
    pub fn append(&mut self, e: &Entry, file: Option<&mut File>) -> io::Result<Option<String>> {
        let mut pax = Vec::new();
        let name = tar_name(e);
        let mut h = Header {
            mode: e.mode & 0o7777,
            uid: e.uid as u64,
            gid: e.gid as u64,
            mtime: e.mtime_ns.div_euclid(1_000_000_000),
            ..Default::default()
        };
        let sparse = match (e.kind, &e.link, &e.sparse) {
            (Kind::File, None, Some(ext)) => Some(encode_map(ext, e.size)),
            _ => None,
        };
        if let Some(map) = &sparse {
            let base = name.rsplit(|&c| c == b'/').next().unwrap_or(b"");
            let mut fake = b"GNUSparseFile.0/".to_vec();
            fake.extend_from_slice(base);
            fake.truncate(100);
            h.name = fake;
            pax_record(&mut pax, b"GNU.sparse.major", b"1");
            pax_record(&mut pax, b"GNU.sparse.minor", b"0");
            pax_record(&mut pax, b"GNU.sparse.name", &name);
            pax_record(
                &mut pax,
                b"GNU.sparse.realsize",
                e.size.to_string().as_bytes(),
            );
            let data: u64 = e
                .sparse
                .as_ref()
                .map(|x| x.iter().map(|p| p.1).sum())
                .unwrap_or(0);
            h.size = map.len() as u64 + data;
        } else {
            if name.len() > 100 {
                pax_record(&mut pax, b"path", &name);
                h.name = name[..100].to_vec();
            } else {
                h.name = name.clone();
            }
            if e.kind == Kind::File && e.link.is_none() {
                h.size = e.size;
            }
        }
        let link = match (&e.link, &e.target) {
            (Some(l), _) => {
                h.typeflag = flag::HARDLINK;
                Some(l)
            }
            (None, Some(t)) if e.kind == Kind::Symlink => {
                h.typeflag = flag::SYMLINK;
                Some(t)
            }
            _ => {
                h.typeflag = match e.kind {
                    Kind::File => flag::FILE,
                    Kind::Dir => flag::DIR,
                    Kind::Symlink => flag::SYMLINK,
                    Kind::Fifo => flag::FIFO,
                    Kind::Char => flag::CHAR,
                    Kind::Block => flag::BLOCK,
                };
                None
            }
        };
        if let Some(l) = link {
            if l.len() > 100 {
                pax_record(&mut pax, b"linkpath", l);
                h.linkname = l[..100].to_vec();
            } else {
                h.linkname = l.clone();
            }
        }
        if let Some((ma, mi)) = e.rdev {
            h.devmajor = ma;
            h.devminor = mi;
            if ma as u64 > MAX_ID || mi as u64 > MAX_ID {
                return Err(io::Error::other(format!(
                    "device numbers {ma}:{mi} of {} do not fit a tar header",
                    e.display_path()
                )));
            }
        }
        if h.uid > MAX_ID {
            pax_record(&mut pax, b"uid", h.uid.to_string().as_bytes());
        }
        if h.gid > MAX_ID {
            pax_record(&mut pax, b"gid", h.gid.to_string().as_bytes());
        }
        if h.size > MAX_11 {
            pax_record(&mut pax, b"size", h.size.to_string().as_bytes());
        }
        if e.mtime_ns % 1_000_000_000 != 0 || h.mtime < 0 || h.mtime as u64 > MAX_11 {
            pax_record(&mut pax, b"mtime", tar::format_time(e.mtime_ns).as_bytes());
        }
        for (k, v) in &e.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(&tar::encode_xattr_name(&k.0));
            pax_record(&mut pax, &key, &v.0);
        }
        if !pax.is_empty() {
            let base = name
                .rsplit(|&c| c == b'/')
                .find(|c| !c.is_empty())
                .unwrap_or(b".");
            let mut xname = b"PaxHeaders/".to_vec();
            xname.extend_from_slice(base);
            xname.truncate(100);
            let xh = Header {
                name: xname,
                mode: 0o644,
                size: pax.len() as u64,
                mtime: h.mtime.clamp(0, MAX_11 as i64),
                typeflag: flag::PAX_LOCAL,
                ..Default::default()
            };
            self.put(&xh.encode())?;
            self.put(&pax)?;
            self.pad()?;
        }
        self.put(&h.encode())?;
        if e.kind != Kind::File || e.link.is_some() {
            return Ok(None);
        }
        let file = file.ok_or_else(|| io::Error::other("regular file without content"))?;
        let mut hasher = Sha256::new();
        match (&sparse, &e.sparse) {
            (Some(map), Some(ext)) => {
                self.put(map)?;
                let mut pos = 0u64;
                for &(off, len) in ext {
                    hash_zeros(&mut hasher, off - pos);
                    let mut r = ExtentReader::new(file, off, len)?;
                    self.copy(&mut r, &mut hasher)?;
                    pos = off + len;
                }
                hash_zeros(&mut hasher, e.size.saturating_sub(pos));
            }
            _ => {
                let mut r = ExtentReader::new(file, 0, e.size)?;
                self.copy(&mut r, &mut hasher)?;
            }
        }
        self.pad()?;
        Ok(Some(hex::encode(hasher.finalize())))
    }

    fn copy(&mut self, r: &mut impl Read, hasher: &mut Sha256) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let res = loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            hasher.update(&buf[..n]);
            if let Err(e) = self.put(&buf[..n]) {
                break Err(e);
            }
        };
        self.buf = buf;
        res
    }

    /// Write the end-of-archive blocks (padded to a 10 KiB record) and
    /// return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&[0u8; 2 * BLOCK])?;
        let rec = 20 * BLOCK as u64;
        let rem = self.written % rec;
        if rem != 0 {
            let zeros = vec![0u8; (rec - rem) as usize];
            self.put(&zeros)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

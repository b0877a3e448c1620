//! The tar format pieces standin writes and reads: ustar headers and PAX
//! extended records (POSIX.1-2001), as GNU tar understands them.

use std::io;

/// Tar block size.
pub const BLOCK: usize = 512;

/// Header type flags.
pub mod flag {
    pub const FILE: u8 = b'0';
    pub const FILE_OLD: u8 = 0;
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const CONTIGUOUS: u8 = b'7';
    pub const PAX_LOCAL: u8 = b'x';
    pub const PAX_GLOBAL: u8 = b'g';
    pub const GNU_LONGNAME: u8 = b'L';
    pub const GNU_LONGLINK: u8 = b'K';
}

/// Fields of one ustar header as standin fills them.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub name: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub typeflag: u8,
    pub linkname: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
}

fn put_octal(field: &mut [u8], value: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        field.fill(b'0');
        field[digits] = 0;
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

impl Header {
    /// Encode into a 512-byte block with checksum.
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        put_bytes(&mut b[0..100], &self.name);
        put_octal(&mut b[100..108], self.mode as u64);
        put_octal(&mut b[108..116], self.uid);
        put_octal(&mut b[116..124], self.gid);
        put_octal(&mut b[124..136], self.size);
        put_octal(&mut b[136..148], self.mtime.max(0) as u64);
        b[156] = self.typeflag;
        put_bytes(&mut b[157..257], &self.linkname);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        if matches!(self.typeflag, flag::CHAR | flag::BLOCK) {
            put_octal(&mut b[329..337], self.devmajor as u64);
            put_octal(&mut b[337..345], self.devminor as u64);
        }
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| x as u32).sum();
        let s = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(s.as_bytes());
        b
    }

    /// Decode a header block; `Ok(None)` for an all-zero block.
    pub fn decode(b: &[u8; BLOCK]) -> io::Result<Option<Header>> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let stored = parse_num(&b[148..156])?;
        let mut sum: u64 = 0;
        for (i, &x) in b.iter().enumerate() {
            sum += if (148..156).contains(&i) {
                b' ' as u64
            } else {
                x as u64
            };
        }
        if stored != sum {
            return Err(invalid("header checksum mismatch (damaged archive)"));
        }
        let mut name = cstr(&b[0..100]).to_vec();
        if &b[257..262] == b"ustar" {
            let prefix = cstr(&b[345..500]);
            if !prefix.is_empty() && b[156] != flag::PAX_LOCAL {
                let mut full = prefix.to_vec();
                full.push(b'/');
                full.extend_from_slice(&name);
                name = full;
            }
        }
        Ok(Some(Header {
            name,
            mode: parse_num(&b[100..108])? as u32,
            uid: parse_num(&b[108..116])?,
            gid: parse_num(&b[116..124])?,
            size: parse_num(&b[124..136])?,
            mtime: parse_num(&b[136..148])? as i64,
            typeflag: b[156],
            linkname: cstr(&b[157..257]).to_vec(),
            devmajor: parse_num(&b[329..337]).unwrap_or(0) as u32,
            devminor: parse_num(&b[337..345]).unwrap_or(0) as u32,
        }))
    }
}

fn cstr(f: &[u8]) -> &[u8] {
    match f.iter().position(|&c| c == 0) {
        Some(n) => &f[..n],
        None => f,
    }
}

fn invalid(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.to_string())
}

/// Parse an octal (or GNU base-256) numeric field.
pub fn parse_num(f: &[u8]) -> io::Result<u64> {
    if let Some(&first) = f.first() {
        if first & 0x80 != 0 {
            if first & 0x40 != 0 {
                return Err(invalid("negative base-256 number in header"));
            }
            let mut v: u64 = (first & 0x3f) as u64;
            for &c in &f[1..] {
                v = v
                    .checked_shl(8)
                    .ok_or_else(|| invalid("number too large"))?
                    | c as u64;
            }
            return Ok(v);
        }
    }
    let s = cstr(f);
    let t: Vec<u8> = s.iter().copied().filter(|c| *c != b' ').collect();
    if t.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&t).map_err(|_| invalid("bad number in header"))?;
    u64::from_str_radix(text, 8).map_err(|_| invalid("bad octal number in header"))
}

/// Append one PAX record `LEN key=value\n`.
pub fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    loop {
        let total = body + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Parse PAX records into (key, value) pairs.
pub fn parse_pax(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&c| c == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| invalid("bad PAX record"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad PAX record length"))?;
        if len > data.len() || len <= sp + 1 || data[len - 1] != b'\n' {
            return Err(invalid("bad PAX record length"));
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| invalid("PAX record without '='"))?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// PAX time value from nanoseconds: `[-]SECONDS.NNNNNNNNN`.
pub fn format_time(ns: i64) -> String {
    let neg = ns < 0;
    let a = ns.unsigned_abs();
    format!(
        "{}{}.{:09}",
        if neg { "-" } else { "" },
        a / 1_000_000_000,
        a % 1_000_000_000
    )
}

/// Parse a PAX time value into nanoseconds.
pub fn parse_time(v: &[u8]) -> io::Result<i64> {
    let s = std::str::from_utf8(v).map_err(|_| invalid("bad PAX time"))?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().map_err(|_| invalid("bad PAX time"))?;
    let mut f = frac.chars().take(9).collect::<String>();
    if !f.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid("bad PAX time"));
    }
    while f.len() < 9 {
        f.push('0');
    }
    let nanos: i64 = f.parse().unwrap_or(0);
    let total = secs
        .checked_mul(1_000_000_000)
        .and_then(|v| v.checked_add(nanos))
        .ok_or_else(|| invalid("PAX time out of range"))?;
    Ok(if neg { -total } else { total })
}

/// Encode an xattr name for a `SCHILY.xattr.` keyword (GNU tar: `%` and `=` escaped).
pub fn encode_xattr_name(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for &c in name {
        match c {
            b'%' => out.extend_from_slice(b"%25"),
            b'=' => out.extend_from_slice(b"%3D"),
            _ => out.push(c),
        }
    }
    out
}

/// Reverse [`encode_xattr_name`].
pub fn decode_xattr_name(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        if name[i..].starts_with(b"%25") {
            out.push(b'%');
            i += 3;
        } else if name[i..].starts_with(b"%3D") {
            out.push(b'=');
            i += 3;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_round_trip() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", &[b'a'; 95]);
        pax_record(&mut out, b"SCHILY.xattr.user.k", b"\0\n\xff=");
        let back = parse_pax(&out).unwrap();
        assert_eq!(back[0].1, vec![b'a'; 95]);
        assert_eq!(back[1].1, b"\0\n\xff=");
    }

    #[test]
    fn times_round_trip() {
        for ns in [
            0,
            1,
            -1,
            -1_000_000_123,
            4_102_444_800_123_456_789,
            i64::MIN + 1,
        ] {
            assert_eq!(parse_time(format_time(ns).as_bytes()).unwrap(), ns);
        }
        assert_eq!(format_time(-1_500_000_000), "-1.500000000");
    }

    #[test]
    fn header_round_trips_and_checks_sum() {
        let h = Header {
            name: b"etc/hostname".to_vec(),
            mode: 0o4755,
            uid: 12345,
            gid: 7,
            size: 99,
            mtime: 1_700_000_000,
            typeflag: flag::FILE,
            ..Default::default()
        };
        let mut b = h.encode();
        let d = Header::decode(&b).unwrap().unwrap();
        assert_eq!(
            (d.name, d.mode, d.uid, d.size),
            (h.name, h.mode, h.uid, h.size)
        );
        b[10] ^= 1;
        assert!(Header::decode(&b).is_err());
    }

    #[test]
    fn xattr_names_escape() {
        let n = b"user.a=b%c";
        assert_eq!(decode_xattr_name(&encode_xattr_name(n)), n);
    }
}

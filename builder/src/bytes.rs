//! Raw bytes (Unix paths, symlink targets, xattr names and values) as JSON
//! strings, reversibly.
//!
//! Valid UTF-8 without a backslash is written as it is. Otherwise every
//! backslash becomes `\\` and every byte that is not part of valid UTF-8
//! becomes `\xHH`. Decoding reverses exactly, so any byte string round-trips,
//! and ordinary names stay readable in manifests.

use serde::{Deserialize, Deserializer, Serializer};

/// Encode raw bytes as a readable, reversible string.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Decode a string made by [`encode`]. Errors on a malformed escape.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let raw = text.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        match raw.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = text
                    .get(i + 2..i + 4)
                    .ok_or_else(|| format!("truncated \\x escape in {text:?}"))?;
                let b = u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad \\x escape {hex:?} in {text:?}"))?;
                out.push(b);
                i += 4;
            }
            _ => return Err(format!("bad escape in {text:?}")),
        }
    }
    Ok(out)
}

/// serde helpers: `#[serde(with = "crate::bytes::serde_bytes")]` on a `Vec<u8>`.
pub mod serde_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).map_err(serde::de::Error::custom)
    }
}

/// serde helpers for `Option<Vec<u8>>`.
pub mod serde_opt_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&encode(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| decode(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        for s in [
            &b"plain/name"[..],
            b"back\\slash",
            b"\xff\xfe",
            b"new\nline",
            b"\\x41",
        ] {
            assert_eq!(decode(&encode(s)).unwrap(), s);
        }
        assert_eq!(encode(b"etc/hostname"), "etc/hostname");
        assert_eq!(encode(b"a\xffb"), "a\\xffb");
    }

    #[test]
    fn rejects_bad_escapes() {
        assert!(decode("\\q").is_err());
        assert!(decode("\\x4").is_err());
        assert!(decode("\\xzz").is_err());
    }
}

//! Fingerprints: the sha256 of a DER certificate, written `sha256:<hex>`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The sha256 of a DER-encoded certificate. Displayed as `sha256:<64 hex>`;
/// parsed with or without the `sha256:` prefix, colons and case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .unwrap_or(t);
        let hex_only: String = t.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(hex_only.to_ascii_lowercase()).map_err(|_| {
            format!("fingerprint {s:?} is not hex; expected sha256:<64 hex digits> as printed by `standin keys show`")
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            format!("fingerprint {s:?} is not 32 bytes; expected sha256:<64 hex digits> as printed by `standin keys show`")
        })?;
        Ok(Fingerprint(arr))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_spellings() {
        let f = Fingerprint::of_der(b"x");
        let plain = hex::encode(f.0);
        let colons: Vec<String> = f.0.iter().map(|b| format!("{b:02X}")).collect();
        for s in [
            f.to_string(),
            plain.clone(),
            plain.to_uppercase(),
            colons.join(":"),
            format!("sha256:{}", colons.join(":")),
        ] {
            assert_eq!(s.parse::<Fingerprint>().unwrap(), f, "{s}");
        }
        assert!("sha256:abcd".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }
}

//! One side of a validation: a profile file now, a running standin later.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::profile::Profile;

/// Where a side's profile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// A profile file (`standin profile --json > FILE`).
    File(PathBuf),
    /// A running standin at `HOST:PORT` (served by `standin target serve`).
    Addr(String),
}

impl Side {
    /// Read a command-line value: an existing file is a file; something
    /// shaped like `HOST:PORT` (or `[V6]:PORT`) is an address; anything else
    /// is taken as a file path.
    pub fn parse(s: &str) -> Side {
        if Path::new(s).exists() {
            return Side::File(PathBuf::from(s));
        }
        if looks_like_addr(s) {
            return Side::Addr(s.to_string());
        }
        Side::File(PathBuf::from(s))
    }

    /// Load the profile of this side.
    pub fn load(&self) -> Result<Profile> {
        match self {
            Side::File(p) => Profile::load(p),
            Side::Addr(a) => bail!(
                "{a}: network addresses need `standin target serve`; not available yet (pass a profile file from `standin profile --json` instead)"
            ),
        }
    }
}

fn looks_like_addr(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err()
    {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && !host.contains('/')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides() {
        assert_eq!(
            Side::parse("198.18.0.2:6320"),
            Side::Addr("198.18.0.2:6320".into())
        );
        assert_eq!(
            Side::parse("standby.example:6320"),
            Side::Addr("standby.example:6320".into())
        );
        assert_eq!(Side::parse("[::1]:6320"), Side::Addr("[::1]:6320".into()));
        assert_eq!(
            Side::parse("/tmp/nope.json"),
            Side::File("/tmp/nope.json".into())
        );
        assert_eq!(Side::parse("a.json"), Side::File("a.json".into()));
        assert_eq!(
            Side::parse("host:notaport"),
            Side::File("host:notaport".into())
        );
    }
}

//! standin-link: the replication link that the source agent and the target
//! daemon share.
//!
//! - [`fingerprint`]: `sha256:<hex>` fingerprints of DER certificates.
//! - [`identity`]: self-signed identities on disk (`keys init`/`keys show`).
//! - [`tls`]: mutual TLS 1.3 with both sides pinning the peer's fingerprint.
//! - [`frame`]: length-prefixed, optionally zstd-compressed frames.
//! - [`heartbeat`]: the heartbeat message, versioned.
//! - [`message`]: the protocol messages carried in frames.
//! - [`mirror_wire`]: the binary encoding of a mirror's entries and diffs.
//! - [`status`]: the protection status a target reports.
//!
//! This crate sits between `builder` (change sets, entries) and the two
//! sides (`agent`, `staging`), so neither side depends on the other.

pub mod fingerprint;
pub mod frame;
pub mod heartbeat;
pub mod identity;
pub mod message;
pub mod mirror_wire;
pub mod status;
pub mod tls;

pub use fingerprint::Fingerprint;
pub use identity::Identity;
pub use message::Message;

/// Default TCP port of the replication link.
pub const DEFAULT_PORT: u16 = 6320;

/// Version of the wire protocol spoken by this build (see docs/protocol.md).
/// 5: every content digest on the link (change sets, mirror batches, the
/// mirror's root digest) is BLAKE3-256, not sha256. 6: a checksum
/// mirror's block digests of a file of more than one block are the
/// blocks' BLAKE3 chaining values at their offsets (`builder::hash::block_cv`),
/// not each block's own BLAKE3 digest.
pub const PROTOCOL_VERSION: u32 = 6;

/// Version of standin, sent in Hello.
pub const STANDIN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Add the default port when an address has none (`host` → `host:6320`).
pub fn with_default_port(addr: &str) -> String {
    with_port(addr, DEFAULT_PORT)
}

/// Default TCP port of the second heartbeat path (`--heartbeat-listen`).
pub const DEFAULT_HEARTBEAT_PORT: u16 = 6321;

/// Add `port` when an address has none.
pub fn with_port(addr: &str, port: u16) -> String {
    let has_port = if let Some(rest) = addr.strip_prefix('[') {
        rest.contains("]:")
    } else {
        addr.matches(':').count() == 1
    };
    if has_port {
        addr.to_string()
    } else if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// A source id from this machine's host name, reduced to `[A-Za-z0-9._-]`.
pub fn default_source_id() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let id: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if message::check_source_id(&id).is_ok() {
        id
    } else {
        "source".to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(super::with_default_port("10.0.0.1"), "10.0.0.1:6320");
        assert_eq!(super::with_default_port("10.0.0.1:7"), "10.0.0.1:7");
        assert_eq!(super::with_default_port("::1"), "[::1]:6320");
        assert_eq!(super::with_default_port("[::1]:9"), "[::1]:9");
        assert_eq!(super::with_default_port("host"), "host:6320");
    }
}

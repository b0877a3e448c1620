//! Protocol messages. Each travels in one frame whose type byte names it;
//! the change set is binary ([`standin_builder::changeset`]), so are the
//! mirror's entries and diffs ([`crate::mirror_wire`]); all others are JSON
//! objects. See docs/protocol.md.

use serde::{Deserialize, Serialize};
use standin_builder::changeset::ChangeSet;
use standin_builder::Entry;

pub use crate::heartbeat::{Heartbeat, ReplicationCounters, HEARTBEAT_FORMAT};
use crate::status::Status;

/// Frame type bytes.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const ERROR: u8 = 0x03;
    pub const HEARTBEAT: u8 = 0x10;
    pub const PROFILE_REQUEST: u8 = 0x20;
    pub const PROFILE_RESPONSE: u8 = 0x21;
    pub const FIX_REQUEST: u8 = 0x22;
    pub const FIX_RESPONSE: u8 = 0x23;
    pub const MIRROR_START: u8 = 0x30;
    pub const MIRROR_ENTRIES: u8 = 0x31;
    pub const MIRROR_DIFF: u8 = 0x32;
    pub const MIRROR_END: u8 = 0x33;
    pub const MIRROR_DONE: u8 = 0x34;
    pub const MIRROR_BASE: u8 = 0x35;
    pub const MIRROR_BASE_ANSWER: u8 = 0x36;
    pub const CHANGE_SET: u8 = 0x40;
    pub const ACK: u8 = 0x41;
    pub const STATUS_REQUEST: u8 = 0x50;
    pub const STATUS_RESPONSE: u8 = 0x51;
}

/// What the connecting side wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The protection agent: mirror, change sets, heartbeats.
    Agent,
    /// A status query (`standin status --target`).
    Status,
    /// Profile requests and fixes (`standin validate`).
    Validate,
    /// Heartbeats only, on the second path (`standin protect
    /// --heartbeat-target`); the target answers each with an Ack.
    Heartbeat,
}

/// First message from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub standin_version: String,
    /// The source's id: 1–64 of `[A-Za-z0-9._-]`, not `.` or `..`.
    pub source_id: String,
    pub role: Role,
}

/// The target's answer to Hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub standin_version: String,
    /// Last change set applied for this source (0 = none): resume after it.
    pub last_applied_seq: u64,
    pub mirror_complete: bool,
}

/// An error the peer reports before closing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub reason: String,
    /// Whether retrying later can help (e.g. a full disk), or not (a refused record).
    pub retry: bool,
}

/// How a mirror compares the trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// Send everything.
    Full,
    /// Send files whose date, time or size differ.
    Dts,
    /// Send blocks whose checksums differ (the default).
    Checksum,
}

/// Source → target: a mirror begins. Its data then travels as ordinary
/// change sets (from `first_seq` on), so it is journaled, resumable and
/// crash-safe like replication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorStart {
    pub mirror_id: String,
    pub mode: MirrorMode,
    pub total_entries: u64,
    /// Bytes of file data the mirror will send (for the percentage).
    pub total_bytes: u64,
    pub first_seq: u64,
}

/// Source → target: a batch of the source's manifest, for a difference mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorEntries {
    pub batch: u64,
    pub entries: Vec<Entry>,
    /// Block size for the target's block digests in the answer.
    pub block_size: u32,
    /// Sparse mirror only ([`MirrorBase`] accepted): topmost paths of the
    /// base that the source no longer has, in tree order; the target
    /// answers them as `extra` at the end of the listing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<Vec<u8>>,
}

/// Source → target, on the comparison connection before any
/// [`MirrorEntries`]: the source remembers the replica as the mirror
/// `mirror_id` left it (root digest, last change set). When the target's
/// replica is still exactly that, the source lists only what changed since
/// (a *sparse* mirror); see [`MirrorBaseAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorBase {
    pub mirror_id: String,
    pub root_digest: String,
    pub last_seq: u64,
}

/// Target → source: whether the offered base holds; when it does, the
/// listing that follows is sparse (unlisted entries are the base's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorBaseAnswer {
    pub accepted: bool,
    /// Why not, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The largest block of a checksum mirror unless the agent is told
/// otherwise (`MirrorEntries::block_size`); the target hashes the block
/// values it keeps for a large file with it.
pub const DEFAULT_MIRROR_BLOCK_SIZE: u32 = 128 << 10;

/// Block size of one file in a checksum mirror, from the source's file
/// size (both sides know it): about the square root of the size as a power
/// of two, at least 1 KiB and at most `max` (the batch's `block_size`), so
/// a file has few enough blocks for the answer to stay small and a small
/// change sends little. Block digests are 16 bytes: for a file of more
/// than one block, the first 16 of each block's BLAKE3 chaining value at
/// its offset (`builder::hash::block_cv`; the file's content digest is
/// their merge, so each side hashes each byte once and the target can
/// check a patched file re-reading only the patched blocks); for a file of
/// one block, the first 16 of its content digest. The file's whole content
/// digest (BLAKE3-256) is checked after the patch.
pub fn mirror_block_size(file_size: u64, max: u32) -> u64 {
    let root = (file_size as f64).sqrt() as u64;
    root.next_power_of_two().clamp(1024, (max as u64).max(1024))
}

/// One path of a [`MirrorDiff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffItem {
    #[serde(with = "standin_builder::bytes::serde_bytes")]
    pub path: Vec<u8>,
    /// `same`, `missing`, `metadata` or `content`.
    pub state: String,
    /// For `content`: the digest (16 bytes, see [`mirror_block_size`]) of
    /// each block the target holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<[u8; 16]>,
}

/// Target → source: what differs for one [`MirrorEntries`] batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorDiff {
    pub batch: u64,
    pub items: Vec<DiffItem>,
}

/// Source → target: the mirror's last change set has been sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorEnd {
    pub mirror_id: String,
    pub last_seq: u64,
    /// The source's manifest root digest, checked against the replica.
    pub root_digest: Option<String>,
}

/// Target → source: the mirror is recorded (after `last_seq` applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorDone {
    pub mirror_id: String,
    pub complete: bool,
    pub reason: Option<String>,
}

/// Target → source: every change set up to `seq` is applied and durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub seq: u64,
}

/// A protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Error(ErrorMsg),
    Heartbeat(Heartbeat),
    ProfileRequest,
    ProfileResponse(serde_json::Value),
    /// Apply these automatic fixes (the validate crate's `Fix` values, as JSON) to the target's state directory.
    FixRequest(serde_json::Value),
    /// What the fixes did (the validate crate's `AppliedFixes`, as JSON).
    FixResponse(serde_json::Value),
    MirrorStart(MirrorStart),
    MirrorEntries(MirrorEntries),
    MirrorDiff(MirrorDiff),
    MirrorEnd(MirrorEnd),
    MirrorDone(MirrorDone),
    MirrorBase(MirrorBase),
    MirrorBaseAnswer(MirrorBaseAnswer),
    ChangeSet(Box<ChangeSet>),
    Ack(Ack),
    StatusRequest,
    StatusResponse(Box<Status>),
}

/// Why a frame is not a valid message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("unknown frame type {0:#04x}")]
    UnknownKind(u8),
    #[error("malformed {what} message: {reason}")]
    Malformed { what: &'static str, reason: String },
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("protocol messages serialize")
}

fn parse<'a, T: Deserialize<'a>>(what: &'static str, p: &'a [u8]) -> Result<T, MessageError> {
    serde_json::from_slice(p).map_err(|e| MessageError::Malformed {
        what,
        reason: e.to_string(),
    })
}

fn empty(what: &'static str, p: &[u8]) -> Result<(), MessageError> {
    if p.is_empty() || p == b"{}" {
        Ok(())
    } else {
        Err(MessageError::Malformed {
            what,
            reason: "expected an empty payload".into(),
        })
    }
}

impl Message {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Error(_) => "error",
            Message::Heartbeat(_) => "heartbeat",
            Message::ProfileRequest => "profile request",
            Message::ProfileResponse(_) => "profile response",
            Message::FixRequest(_) => "fix request",
            Message::FixResponse(_) => "fix response",
            Message::MirrorStart(_) => "mirror start",
            Message::MirrorEntries(_) => "mirror entries",
            Message::MirrorDiff(_) => "mirror diff",
            Message::MirrorEnd(_) => "mirror end",
            Message::MirrorDone(_) => "mirror done",
            Message::MirrorBase(_) => "mirror base",
            Message::MirrorBaseAnswer(_) => "mirror base answer",
            Message::ChangeSet(_) => "change set",
            Message::Ack(_) => "ack",
            Message::StatusRequest => "status request",
            Message::StatusResponse(_) => "status response",
        }
    }

    /// Frame type byte and payload.
    pub fn encode(&self) -> anyhow::Result<(u8, Vec<u8>)> {
        use kind::*;
        Ok(match self {
            Message::Hello(m) => (HELLO, json(m)),
            Message::Welcome(m) => (WELCOME, json(m)),
            Message::Error(m) => (ERROR, json(m)),
            Message::Heartbeat(m) => (HEARTBEAT, json(m)),
            Message::ProfileRequest => (PROFILE_REQUEST, Vec::new()),
            Message::ProfileResponse(v) => (PROFILE_RESPONSE, json(v)),
            Message::FixRequest(v) => (FIX_REQUEST, json(v)),
            Message::FixResponse(v) => (FIX_RESPONSE, json(v)),
            Message::MirrorStart(m) => (MIRROR_START, json(m)),
            Message::MirrorEntries(m) => (MIRROR_ENTRIES, crate::mirror_wire::encode_entries(m)?),
            Message::MirrorDiff(m) => (MIRROR_DIFF, crate::mirror_wire::encode_diff(m)?),
            Message::MirrorEnd(m) => (MIRROR_END, json(m)),
            Message::MirrorDone(m) => (MIRROR_DONE, json(m)),
            Message::MirrorBase(m) => (MIRROR_BASE, json(m)),
            Message::MirrorBaseAnswer(m) => (MIRROR_BASE_ANSWER, json(m)),
            Message::ChangeSet(cs) => (CHANGE_SET, cs.encode()?),
            Message::Ack(m) => (ACK, json(m)),
            Message::StatusRequest => (STATUS_REQUEST, Vec::new()),
            Message::StatusResponse(s) => (STATUS_RESPONSE, json(s)),
        })
    }

    /// Decode a frame's payload.
    pub fn decode(kind: u8, p: &[u8]) -> Result<Message, MessageError> {
        use kind::*;
        Ok(match kind {
            HELLO => Message::Hello(parse("hello", p)?),
            WELCOME => Message::Welcome(parse("welcome", p)?),
            ERROR => Message::Error(parse("error", p)?),
            HEARTBEAT => Message::Heartbeat(parse("heartbeat", p)?),
            PROFILE_REQUEST => {
                empty("profile request", p)?;
                Message::ProfileRequest
            }
            PROFILE_RESPONSE => Message::ProfileResponse(parse("profile response", p)?),
            FIX_REQUEST => Message::FixRequest(parse("fix request", p)?),
            FIX_RESPONSE => Message::FixResponse(parse("fix response", p)?),
            MIRROR_START => Message::MirrorStart(parse("mirror start", p)?),
            MIRROR_ENTRIES => {
                Message::MirrorEntries(crate::mirror_wire::decode_entries(p).map_err(|reason| {
                    MessageError::Malformed {
                        what: "mirror entries",
                        reason,
                    }
                })?)
            }
            MIRROR_DIFF => {
                Message::MirrorDiff(crate::mirror_wire::decode_diff(p).map_err(|reason| {
                    MessageError::Malformed {
                        what: "mirror diff",
                        reason,
                    }
                })?)
            }
            MIRROR_END => Message::MirrorEnd(parse("mirror end", p)?),
            MIRROR_DONE => Message::MirrorDone(parse("mirror done", p)?),
            MIRROR_BASE => Message::MirrorBase(parse("mirror base", p)?),
            MIRROR_BASE_ANSWER => Message::MirrorBaseAnswer(parse("mirror base answer", p)?),
            CHANGE_SET => Message::ChangeSet(Box::new(ChangeSet::decode(p).map_err(|e| {
                MessageError::Malformed {
                    what: "change set",
                    reason: e.to_string(),
                }
            })?)),
            ACK => Message::Ack(parse("ack", p)?),
            STATUS_REQUEST => {
                empty("status request", p)?;
                Message::StatusRequest
            }
            STATUS_RESPONSE => Message::StatusResponse(Box::new(parse("status response", p)?)),
            other => return Err(MessageError::UnknownKind(other)),
        })
    }
}

/// Check a source id: 1–64 of `[A-Za-z0-9._-]`, not `.` or `..` (it names a directory).
pub fn check_source_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "source id {id:?} must be 1-64 characters of A-Z a-z 0-9 . _ - (not . or ..)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let msgs = vec![
            Message::Hello(Hello {
                protocol: 1,
                standin_version: "0.1.0".into(),
                source_id: "s".into(),
                role: Role::Agent,
            }),
            Message::Ack(Ack { seq: 9 }),
            Message::StatusRequest,
            Message::ChangeSet(Box::new(ChangeSet {
                seq: 1,
                created_unix_ms: 0,
                records: vec![],
            })),
            Message::MirrorDiff(MirrorDiff {
                batch: 1,
                items: vec![DiffItem {
                    path: b"a\xff".to_vec(),
                    state: "content".into(),
                    blocks: vec![[0; 16]],
                }],
            }),
        ];
        for m in msgs {
            let (k, p) = m.encode().unwrap();
            assert_eq!(Message::decode(k, &p).unwrap(), m);
        }
        assert!(matches!(
            Message::decode(0x99, b""),
            Err(MessageError::UnknownKind(0x99))
        ));
        assert!(Message::decode(kind::HELLO, b"\xff\x00garbage").is_err());
        assert!(Message::decode(kind::CHANGE_SET, b"SICSxxxx").is_err());
        assert!(Message::decode(kind::STATUS_REQUEST, b"x").is_err());
    }

    #[test]
    fn source_ids() {
        assert!(check_source_id("web-01.example").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_source_id(bad).is_err(), "{bad}");
        }
    }
}

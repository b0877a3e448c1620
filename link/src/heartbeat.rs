//! The heartbeat the agent sends on the replication link and, when
//! configured, on a second path (see docs/protocol.md).
//!
//! Versioned by [`Heartbeat::format`]: format 1 (the field absent) carried
//! only the sequence number and the queue; format 2 adds the spill to disk,
//! the interval and the replication counters. Every field added after
//! format 1 has a serde default, so a target reads both formats, and an
//! older target ignores the fields it does not know.

use serde::{Deserialize, Serialize};

/// The heartbeat format this build sends.
pub const HEARTBEAT_FORMAT: u32 = 2;

/// Source → target every few seconds, on every heartbeat path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub sent_unix_ms: i64,
    /// Newest sequence number the source has cut.
    pub source_seq: u64,
    /// Change sets queued at the source (memory and disk).
    pub queue_sets: u64,
    /// Bytes queued at the source (memory and disk).
    pub queue_bytes: u64,
    /// When the oldest unacknowledged change set was cut, if any.
    pub oldest_pending_unix_ms: Option<i64>,
    /// Format of this heartbeat (absent or 0: format 1).
    #[serde(default)]
    pub format: u32,
    /// How often the agent sends heartbeats, in ms (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Of the queue: change sets spilled to disk (format 2).
    #[serde(default)]
    pub spilled_sets: u64,
    /// Of the queue: bytes spilled to disk (format 2).
    #[serde(default)]
    pub spilled_bytes: u64,
    /// Highest sequence number the target acknowledged to the agent (format 2).
    #[serde(default)]
    pub last_acked: u64,
    /// Continuous replication's counters, once it runs (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationCounters>,
}

/// Counters of the agent's continuous replication carried in heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationCounters {
    /// Periodic checksum sweeps run.
    #[serde(default)]
    pub sweeps: u64,
    /// Paths all sweeps found different from what the target holds (repaired).
    #[serde(default)]
    pub sweep_repairs: u64,
    /// When the last sweep ended, ms since the epoch.
    #[serde(default)]
    pub last_sweep_unix_ms: Option<i64>,
    /// Paths the last sweep repaired.
    #[serde(default)]
    pub last_sweep_repairs: u64,
    /// Times the queue was full and replication fell back to a difference sweep.
    #[serde(default)]
    pub queue_full: u64,
    /// Difference sweeps after lost events or a full queue.
    #[serde(default)]
    pub rescans: u64,
    /// The first paths the last periodic sweep repaired (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_sweep_paths: Vec<String>,
}

impl Heartbeat {
    /// The format of this heartbeat (1 when the sender predates the field).
    pub fn format(&self) -> u32 {
        self.format.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_1_heartbeats_still_parse_and_new_fields_are_ignored_by_old_readers() {
        let old = br#"{"sent_unix_ms":5,"source_seq":3,"queue_sets":1,"queue_bytes":10,"oldest_pending_unix_ms":null}"#;
        let hb: Heartbeat = serde_json::from_slice(old).unwrap();
        assert_eq!((hb.format(), hb.source_seq, hb.spilled_bytes), (1, 3, 0));
        assert!(hb.replication.is_none());

        let new = Heartbeat {
            format: HEARTBEAT_FORMAT,
            spilled_bytes: 7,
            replication: Some(ReplicationCounters {
                sweep_repairs: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = serde_json::to_vec(&new).unwrap();
        assert_eq!(serde_json::from_slice::<Heartbeat>(&text).unwrap(), new);
        // A format-1 reader: the same struct without the new fields.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct V1 {
            sent_unix_ms: i64,
            source_seq: u64,
            queue_sets: u64,
            queue_bytes: u64,
            oldest_pending_unix_ms: Option<i64>,
        }
        assert!(serde_json::from_slice::<V1>(&text).is_ok());
    }
}

//! `target-config.json` in the state directory: choices made at protection
//! time that the failover follows.
//!
//! ```json
//! { "network_mode": "retain", "nic_map": { "eth0": "ens3", "52:54:00:aa:bb:cc": "ens4" } }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// File name in the state directory.
pub const CONFIG_FILE: &str = "target-config.json";

/// What happens to network configuration at failover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Keep the target's network configuration as it is (default).
    #[default]
    Retain,
    /// Take the source's configuration, its NICs renamed to the target's by `nic_map`.
    Source,
    /// Keep the target's configuration and add the source's addresses to the mapped NICs.
    Add,
}

/// The target's failover settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    #[serde(default)]
    pub network_mode: NetworkMode,
    /// Source NIC (name or MAC) → target NIC (name or MAC). A NIC not
    /// listed keeps its name.
    #[serde(default)]
    pub nic_map: BTreeMap<String, String>,
}

impl TargetConfig {
    /// Load from the state directory; a missing file means the defaults.
    pub fn load(state_dir: &Path) -> Result<TargetConfig> {
        let p = state_dir.join(CONFIG_FILE);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "reading {}: expected {{\"network_mode\": \"retain|source|add\", \"nic_map\": {{\"eth0\": \"ens3\"}}}}",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TargetConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// The target NIC for a source NIC name or MAC.
    pub fn map_nic<'a>(&'a self, nic: &'a str) -> &'a str {
        self.nic_map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(nic))
            .map(|(_, v)| v.as_str())
            .unwrap_or(nic)
    }
}

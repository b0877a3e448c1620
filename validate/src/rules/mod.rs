//! Compatibility rules: each compares the source's and the target's
//! profile and yields findings with a stable id.
//!
//! | id | severity when it fires |
//! | --- | --- |
//! | `os.match` | error |
//! | `arch.match` | error |
//! | `cpu.count` | warning |
//! | `memory.size` | warning |
//! | `boot.mode` | error |
//! | `boot.loader` | error |
//! | `volume.<mount>.fs` | error |
//! | `capacity.staging` | warning (fits only used data / with reclaimed space), error (shortfall) |
//! | `staging.same-fs` | error (auto fix) |
//! | `nic.map` | error |
//! | `nic.count` | warning |
//! | `services.target-running` | warning (auto fix) |
//! | `hostname` | warning (same name) |
//! | `version.compat` | error |

use crate::profile::Profile;
use crate::report::Report;

mod misc;
mod network;
mod storage;
mod system;

pub use storage::{choose_staging_path, SYSTEM_PATHS};

/// Tunables of the rules.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest accepted memory difference in percent (default 25).
    pub memory_tolerance_percent: f64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            memory_tolerance_percent: 25.0,
        }
    }
}

/// Run every rule on a source and a target profile.
pub fn validate(source: &Profile, target: &Profile, opts: &Options) -> Report {
    let mut f = Vec::new();
    system::os(source, target, &mut f);
    system::arch(source, target, &mut f);
    system::cpus(source, target, &mut f);
    system::memory(source, target, opts, &mut f);
    system::boot_mode(source, target, &mut f);
    system::boot_loader(source, target, &mut f);
    storage::volumes(source, target, &mut f);
    storage::capacity(source, target, &mut f);
    storage::same_fs(target, &mut f);
    network::nics(source, target, &mut f);
    misc::services(source, target, &mut f);
    misc::hostname(source, target, &mut f);
    misc::version(source, target, &mut f);
    Report { findings: f }
}

/// `N bytes (1.5 GiB)`: exact count and a readable size.
pub fn bytes(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} bytes")
    } else {
        format!("{n} bytes ({v:.1} {})", U[i])
    }
}

#[cfg(test)]
mod tests;

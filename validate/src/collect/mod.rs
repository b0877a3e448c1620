//! Collecting a [`Profile`] through a [`Facts`] source.

use std::path::PathBuf;

use crate::facts::Facts;
use crate::profile::{Profile, SCHEMA};

mod net;
mod staging;
mod system;
mod volumes;

pub use staging::{dir_allocated_bytes, DEFAULT_STAGING_PATH};
pub use system::KNOWN_BOOT_LOADERS;

/// What the caller adds to the collected facts.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions {
    /// Version of the running standin (recorded in the profile).
    pub standin_version: String,
    /// Staging path as seen inside the system tree; default
    /// [`DEFAULT_STAGING_PATH`], or the state directory's configured one.
    pub staging_path: Option<PathBuf>,
    /// A target state directory: its configured staging path is used and
    /// its `rollback/` area is reported as reclaimable.
    pub state_dir: Option<PathBuf>,
}

/// Collect the profile of the machine (and tree) `facts` describe.
///
/// Never fails: a fact that cannot be read is left out with a note.
pub fn collect(facts: &dyn Facts, opts: &CollectOptions) -> Profile {
    let mut notes = Vec::new();
    let (kernel, arch) = facts.uname();
    let os = system::os(facts, &mut notes);
    let (cpus, cpu_model) = system::cpu(facts, &mut notes);
    let memory_bytes = system::memory(facts, &mut notes);
    let volumes = volumes::volumes(facts, &mut notes);
    let boot_mode = system::boot_mode(facts);
    let boot_loader = system::boot_loader(facts, &mut notes);
    let nics = net::nics(facts, &mut notes);
    let (hostname, domain) = system::hostname(facts, &mut notes);
    let services = system::services(facts, &mut notes);
    let mut profile = Profile {
        schema: SCHEMA.to_string(),
        os,
        kernel: Some(kernel).filter(|k| !k.is_empty()),
        arch,
        cpus,
        cpu_model,
        memory_bytes,
        volumes,
        boot_mode,
        boot_loader,
        nics,
        hostname,
        domain,
        services,
        services_to_stop: Vec::new(),
        standin_version: Some(opts.standin_version.clone()).filter(|v| !v.is_empty()),
        staging: None,
        reclaimable_bytes: None,
        notes,
    };
    staging::staging(facts, opts, &mut profile);
    profile
}

#[cfg(test)]
pub(crate) mod tests;

//! The target's profile as served to `standin validate`.
//!
//! This is the one place that produces it: for now a JSON value with the
//! basic facts; the validate crate's `Profile` replaces it when merged.

use serde_json::{json, Value};

/// This machine's profile.
pub fn local_profile() -> Value {
    let uts = rustix::system::uname();
    let os: serde_json::Map<String, Value> = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.to_lowercase(),
                Value::String(v.trim_matches('"').to_string()),
            )
        })
        .collect();
    let mem_kib: Option<u64> = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    });
    json!({
        "hostname": uts.nodename().to_string_lossy(),
        "kernel": uts.release().to_string_lossy(),
        "arch": uts.machine().to_string_lossy(),
        "os": os,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_bytes": mem_kib.map(|k| k * 1024),
        "boot_mode": if std::path::Path::new("/sys/firmware/efi").exists() { "uefi" } else { "bios" },
    })
}
